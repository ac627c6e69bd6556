"""Install the capture functions and guards from schema/triggers.sql.

`pgtide migrate` re-applies that file (it is idempotent) whenever its hash differs
from the one recorded in the database, so a change to it reaches databases
migrated before the change (cdc/migrate.py).
"""

from pathlib import Path
from typing import Any

from yoyo import step

__depends__ = {"0001_engine"}

TRIGGERS = Path(__file__).resolve().parent.parent / "triggers.sql"


def apply(conn: Any) -> None:
    conn.cursor().execute(TRIGGERS.read_text())


steps = [step(apply)]
