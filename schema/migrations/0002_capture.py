"""Install the capture functions and guards from schema/triggers.sql.

`pgtide migrate` also re-applies that file on every run (it is idempotent), so
a change to it reaches databases migrated before the change.
"""

from pathlib import Path
from typing import Any

from yoyo import step

__depends__ = {"0001_engine"}

TRIGGERS = Path(__file__).resolve().parent.parent / "triggers.sql"


def apply(conn: Any) -> None:
    conn.cursor().execute(TRIGGERS.read_text())


steps = [step(apply)]
