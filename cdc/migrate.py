"""Installing pgtide into a database: the engine in schema `pgtide`, then the apps.

The engine's migrations (`schema/migrations/`) and yoyo's bookkeeping live in schema
`pgtide` alone: they run with `search_path = pgtide`, so `pgtide migrate` creates,
alters and tracks nothing in any other schema, and a database's own `clients` or
`sync_log` in `public` are never touched. Each migration runs in one transaction
(PostgreSQL's DDL is transactional): a failed one leaves nothing behind.

Apps (docs/design.md, "Apps") bring migrations of their own, applied after the
engine's with the database's default search_path (their tables usually live in
`public`), recorded under ids `<app>/<file>` so two apps never collide; then their
tables are tracked and the app is recorded in `pgtide.sync_apps`.

A database migrated by the release before this layout (engine, yoyo and the domain
in `public`) is adopted in place first: one transaction moves the engine's tables
into `pgtide` with their rows, indexes and triggers, and carries over the record of
what was applied (`_adopt_legacy`).

`triggers.sql` is idempotent. Re-applying it takes short locks on pgtide.sync_log
and pgtide.sync_order, so it is re-applied only when its hash differs from the one
recorded in the database (a comment on the `pgtide` schema).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cdc import db, tracking
from cdc.queries import queries

log = logging.getLogger(__name__)

_LOCK_KEY = 0x7067746964656D  # 'pgtidem': serialises concurrent `migrate` runs
ENGINE_SCHEMA = "pgtide"

# What the release before the move created in `public`, and the yoyo ids it recorded.
LEGACY_TABLES = (
    "sync_log", "sync_order", "sync_sequencer", "sync_tracked", "sync_idempotency",
    "sync_mutations", "sync_clocks", "sync_seal", "sync_retention", "sync_tokens",
)  # fmt: skip
LEGACY_SEQUENCES = ("sync_doorbell",)
LEGACY_ENGINE_IDS = ("0001_engine", "0002_capture", "0004_idempotency", "0005_audit", "0006_auth")
LEGACY_DOMAIN_ID = "0003_domain"  # now the shipped app's first migration
LEGACY_APP = ("dynapharm", "0001_domain")
_YOYO_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock")


@dataclass(frozen=True)
class AppInstall:
    """What installing one app takes: its name, how it is imported, migrations, tables."""

    name: str
    ref: str
    migrations: Path | None = None
    track: tuple[str, ...] = ()


def schema_dir() -> Path:
    """The `schema/` folder: inside the installed package, or beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "schema", here.parent / "schema"):
        if (candidate / "triggers.sql").is_file():
            return candidate
    raise FileNotFoundError("pgtide's schema/ folder is missing from the installation")


def yoyo_url(url: str) -> str:
    """A yoyo URL for psycopg 3 with every libpq parameter of `url`, in schema pgtide."""
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    dbname = params.pop("dbname", "")
    params["schema"] = ENGINE_SCHEMA  # yoyo sets it as the search_path of its connections
    return f"postgresql+psycopg:///{dbname}?{urlencode(params)}"


@dataclass
class MigrationReport:
    """What `migrate` did."""

    applied: list[str] = field(default_factory=list)
    triggers_applied: bool = False
    adopted_legacy: bool = False
    installed_apps: list[str] = field(default_factory=list)


def triggers_sql() -> str:
    """The text of `schema/triggers.sql`."""
    return (schema_dir() / "triggers.sql").read_text(encoding="utf-8")


def _digest(text: str) -> str:
    return "triggers.sql sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _backend_class() -> type[Any]:
    from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend

    class Backend(PostgresqlPsycopgBackend):  # type: ignore[misc]
        """yoyo's backend, whose migration steps may run under another search_path.

        Bookkeeping statements run on the backend's own connection (search_path
        pgtide); each migration runs on a copy, which gets `steps_search_path` when
        set: an app's migrations see the database's default search_path.
        """

        steps_search_path: str | None = None

        def copy(self) -> Any:
            other = super().copy()
            if self.steps_search_path is not None:
                other.schema = self.steps_search_path
                other.init_connection(other.connection)
            return other

    return Backend


@contextmanager
def _yoyo(url: str) -> Iterator[Any]:
    from yoyo.connections import parse_uri

    backend = _backend_class()(parse_uri(yoyo_url(url)), "_yoyo_migration")
    try:
        backend.init_database()
        yield backend
    finally:
        backend.connection.close()


def _engine_migrations() -> Any:
    from yoyo import read_migrations

    return read_migrations(str(schema_dir() / "migrations"))


def _app_migrations(app: AppInstall) -> Any:
    """The app's migrations with ids `<app>/<file>`, so that apps never collide."""
    from yoyo import read_migrations
    from yoyo.migrations import get_migration_hash

    if app.migrations is None:
        return read_migrations()
    found = read_migrations(str(app.migrations))
    for m in found:
        m.id = f"{app.name}/{m.id}"
        m.hash = get_migration_hash(m.id)
    return found


def _ensure_schema(url: str) -> None:
    with db.connect(url) as conn:
        if conn.execute(queries["engine_schema_exists"]).fetchone() is not None:
            return
        # IF NOT EXISTS is not safe against a concurrent `migrate`: serialise on our lock.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                sql.Identifier(ENGINE_SCHEMA)))  # fmt: skip


def migrate(url: str, apps: Sequence[AppInstall] = ()) -> MigrationReport:
    """Install or upgrade the engine, then `apps`. Idempotent."""
    report = MigrationReport()
    _ensure_schema(url)
    with _yoyo(url) as backend, backend.lock():
        backend.ensure_internal_schema_updated()
        report.adopted_legacy = _adopt_legacy(url, backend)
        todo = backend.to_apply(_engine_migrations())
        backend.apply_migrations(todo)
        report.applied += [m.id for m in todo]
        backend.steps_search_path = "DEFAULT"
        for app in apps:
            todo = backend.to_apply(_app_migrations(app))
            backend.apply_migrations(todo)
            report.applied += [m.id for m in todo]
    report.triggers_applied = _apply_triggers_if_changed(url)
    if apps:
        report.installed_apps = _record_apps(url, apps)
    return report


def _record_apps(url: str, apps: Sequence[AppInstall]) -> list[str]:
    """Track each app's tables and record it as installed; the apps new to the database."""
    new = []
    with db.connect(url) as conn, conn.transaction():
        tracked = {(r[0], r[1]) for r in conn.execute(queries["tracked_names"]).fetchall()}
        for app in apps:
            for table in app.track:
                schema, _, name = table.rpartition(".")
                if (schema or "public", name) not in tracked:
                    tracking.track(conn, table)
            row = conn.execute(queries["record_app"], {"name": app.name, "ref": app.ref})
            if row.fetchone() == (True,):
                new.append(app.name)
    return new


def installed_apps(url: str) -> list[tuple[str, str]]:
    """The (name, ref) of every app installed in the database, in install order."""
    with db.connect(url) as conn:
        try:
            return [(r[0], r[1]) for r in conn.execute(queries["installed_apps"]).fetchall()]
        except psycopg.errors.UndefinedTable:
            return []  # not migrated (or migrated before apps existed)


def _adopt_legacy(url: str, backend: Any) -> bool:
    """Move a database of the release before schema `pgtide` into this layout, in place.

    One transaction: the engine's tables and sequence move to `pgtide` (rows, indexes,
    constraints and triggers go with them), the applied migrations are recorded in
    pgtide's bookkeeping (the domain's as the shipped app's), and the old bookkeeping
    in `public` loses our rows (and its tables, when nothing else is left in them).
    False when there is nothing to adopt.
    """
    from yoyo.migrations import get_migration_hash

    with db.connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        row = conn.execute(queries["legacy_layout"]).fetchone()
        if row is None or not row[0]:
            return False
        applied = [r[0] for r in conn.execute(queries["legacy_applied"]).fetchall()]
        for name in LEGACY_TABLES:
            conn.execute(sql.SQL("ALTER TABLE IF EXISTS {} SET SCHEMA {}").format(
                sql.Identifier("public", name), sql.Identifier(ENGINE_SCHEMA)))  # fmt: skip
        for name in LEGACY_SEQUENCES:
            conn.execute(sql.SQL("ALTER SEQUENCE IF EXISTS {} SET SCHEMA {}").format(
                sql.Identifier("public", name), sql.Identifier(ENGINE_SCHEMA)))  # fmt: skip
        for (role,) in conn.execute(queries["engine_grantees"]).fetchall():
            # Roles that wrote or read the tables in public keep their access.
            who = sql.SQL("PUBLIC") if role is None else sql.Identifier(role)
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA pgtide TO {}").format(who))
        ids = [i for i in LEGACY_ENGINE_IDS if i in applied]
        if LEGACY_DOMAIN_ID in applied:
            ids.append("/".join(LEGACY_APP))
            conn.execute(queries["create_apps_table"])
            conn.execute(queries["record_app"], {"name": LEGACY_APP[0], "ref": LEGACY_APP[0]})
        for migration_id in ids:
            conn.execute(queries["mark_migration"], {
                "hash": get_migration_hash(migration_id), "id": migration_id})  # fmt: skip
        ours = [*LEGACY_ENGINE_IDS, LEGACY_DOMAIN_ID]
        conn.execute(queries["forget_legacy_log"], {"ids": ours})
        conn.execute(queries["forget_legacy_migrations"], {"ids": ours})
        left = conn.execute(queries["legacy_bookkeeping_left"]).fetchone()
        if left is not None and left[0] == 0:
            for name in _YOYO_TABLES:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier("public", name)))  # fmt: skip
    log.info("moved pgtide's tables from public into schema pgtide")
    return True


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


def pending(url: str, apps: Sequence[AppInstall] = ()) -> list[str]:
    """Ids of migrations not applied yet (the engine's, then the apps'). Changes nothing."""
    with db.connect(url) as conn:
        if conn.execute(queries["engine_schema_exists"]).fetchone() is None:
            ids = [m.id for m in _engine_migrations()]
            return ids + [m.id for app in apps for m in _app_migrations(app)]
        row = conn.execute(queries["legacy_layout"]).fetchone()
        if row is not None and row[0]:
            return ["(move pgtide's tables from public into schema pgtide)"]
    with _yoyo(url) as backend:
        todo = [m.id for m in backend.to_apply(_engine_migrations())]
        for app in apps:
            todo += [m.id for m in backend.to_apply(_app_migrations(app))]
        return todo


__all__ = [
    "AppInstall",
    "MigrationReport",
    "installed_apps",
    "migrate",
    "pending",
    "schema_dir",
    "triggers_sql",
]
