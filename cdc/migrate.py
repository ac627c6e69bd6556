"""Applying `schema/`: yoyo migrations, then `triggers.sql` whenever it changed.

`triggers.sql` is idempotent. Re-applying it takes short locks on sync_log and
sync_order, so it is re-applied only when its hash differs from the one recorded
in the database (a comment on the `pgtide` schema); a change to the file thus
reaches databases migrated before the change.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cdc import db

log = logging.getLogger(__name__)

_LOCK_KEY = 0x7067746964656D  # 'pgtidem': serialises concurrent `migrate` runs


def schema_dir() -> Path:
    """The `schema/` folder: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schema", here.parent / "schema"):
        if (candidate / "triggers.sql").is_file():
            return candidate
    raise FileNotFoundError("pgtide's schema/ folder is missing from the installation")


def yoyo_url(url: str) -> str:
    """A yoyo URL for psycopg 3 carrying every libpq parameter of `url` (socket hosts too)."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    dbname = params.pop("dbname", "")
    return f"postgresql+psycopg:///{dbname}?{urlencode(params)}"


@dataclass
class MigrationReport:
    """What `migrate` did."""

    applied: list[str] = field(default_factory=list)
    triggers_applied: bool = False


def triggers_sql() -> str:
    """The text of `schema/triggers.sql`."""
    return (schema_dir() / "triggers.sql").read_text(encoding="utf-8")


def _digest(text: str) -> str:
    return "triggers.sql sha256:" + hashlib.sha256(text.encode()).hexdigest()


def migrate(url: str) -> MigrationReport:
    """Apply pending migrations and, if it changed, `triggers.sql`. Idempotent."""
    from yoyo import get_backend, read_migrations

    report = MigrationReport()
    backend = get_backend(yoyo_url(url))
    try:
        migrations = read_migrations(str(schema_dir() / "migrations"))
        with backend.lock():
            todo = backend.to_apply(migrations)
            if todo:
                backend.apply_migrations(todo)
            report.applied = [m.id for m in todo]
    finally:
        backend.connection.close()
    report.triggers_applied = _apply_triggers_if_changed(url)
    return report


def _apply_triggers_if_changed(url: str) -> bool:
    text = triggers_sql()
    digest = _digest(text)
    with db.connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        recorded = conn.execute("SELECT obj_description('pgtide'::regnamespace, 'pg_namespace')")
        row = recorded.fetchone()
        if row and row[0] == digest:
            return False
        conn.execute(text.encode())  # bytes: no placeholder parsing, several statements
        conn.execute(sql.SQL("COMMENT ON SCHEMA pgtide IS {}").format(sql.Literal(digest)))
        log.info("applied triggers.sql")
        return True


def pending(url: str) -> list[str]:
    """Ids of migrations not applied yet."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(yoyo_url(url))
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(schema_dir() / "migrations")))]
    finally:
        backend.connection.close()


__all__ = ["MigrationReport", "migrate", "pending", "schema_dir", "triggers_sql"]
