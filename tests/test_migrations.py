"""Migrations (cdc/migrate.py, schema/migrations/, schema/triggers.sql): idempotent,
complete on an empty database, and the database's functions match triggers.sql."""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from api.apps import load_app
from cdc import db
from cdc.migrate import MigrationReport, migrate, pending, schema_dir, triggers_sql
from tests.conftest import with_dbname

Conn = psycopg.Connection[Any]

# Every migration file of the engine, in name order (yoyo's order here, as each depends on
# an earlier one), then the shipped app's, under ids `<app>/<file>`.
ENGINE_MIGRATIONS = sorted(
    p.stem
    for p in (schema_dir() / "migrations").iterdir()
    if p.suffix in (".sql", ".py") and not p.name.endswith(".rollback.sql")
)
ALL_MIGRATIONS = [*ENGINE_MIGRATIONS, "dynapharm/0001_domain"]
DYNAPHARM = load_app("dynapharm").install()
# Functions a migration defines, not triggers.sql: the seal digest and chaining are frozen
# there because every seal already written depends on them byte for byte (docs/audit.md).
MIGRATION_FUNCTIONS = ["log_digest_v1", "seal_row_v1"]
DOMAIN_TABLES = [
    "appointments",
    "branches",
    "clients",
    "distributors",
    "orders",
    "products",
    "stock_requests",
]

_FUNCTION = re.compile(r"CREATE OR REPLACE FUNCTION pgtide\.(\w+)\(.*?\$fn\$(.*?)\$fn\$", re.DOTALL)


def file_functions() -> dict[str, str]:
    """Function name -> body, as written in schema/triggers.sql."""
    found = dict(_FUNCTION.findall(triggers_sql()))
    expected = {"capture_v1", "capture_v2", "capture_truncate_v1", "publish", "append_only_v1"}
    assert expected <= found.keys()
    return found


def db_functions(conn: Conn) -> dict[str, str]:
    """Function name -> body, as installed in schema pgtide."""
    rows = conn.execute(
        "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = 'pgtide'::regnamespace"
        " AND proname <> ALL (%s)",
        (MIGRATION_FUNCTIONS,),
    ).fetchall()
    return dict(rows)


def recorded_digest(conn: Conn) -> str | None:
    row = conn.execute("SELECT obj_description('pgtide'::regnamespace, 'pg_namespace')").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def file_sha256() -> str:
    return hashlib.sha256(triggers_sql().encode()).hexdigest()


def fingerprint(conn: Conn) -> dict[str, Any]:
    """What a migration could change: objects, function bodies, triggers, recorded state."""
    return {
        "functions": db_functions(conn),
        "relations": conn.execute(
            "SELECT c.oid::regclass::text, c.relkind FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname IN ('public', 'pgtide') ORDER BY 1"
        ).fetchall(),
        "triggers": conn.execute(
            "SELECT tgrelid::regclass::text, tgname, tgfoid::regprocedure::text, tgenabled,"
            " encode(tgargs, 'escape') FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
        ).fetchall(),
        "tracked": conn.execute(
            "SELECT schema_name, table_name, pk_columns, tracked_at FROM pgtide.sync_tracked"
            " ORDER BY 1, 2"
        ).fetchall(),
        "sequencer": conn.execute("SELECT * FROM pgtide.sync_sequencer").fetchall(),
        "log": conn.execute("SELECT count(*) FROM pgtide.sync_log").fetchall(),
        "digest": recorded_digest(conn),
    }


def capture_works(conn: Conn) -> None:
    """A write to a demo table leaves exactly one pgtide.sync_log row."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM pgtide.sync_log").fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO branches (code, name) VALUES (%s, 'Probe')", (f"P{uuid.uuid4().hex[:8]}",)
    )
    ops = conn.execute(
        "SELECT op, table_name FROM pgtide.sync_log WHERE id > %s", (row[0],)
    ).fetchall()
    assert ops == [("INSERT", "branches")]


@pytest.fixture
def empty_db_url(server_url: str) -> Iterator[str]:
    """A brand-new database with nothing of pgtide in it (dropped afterwards)."""
    name = f"pgtide_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --- idempotence


def test_migrate_on_a_migrated_database_changes_nothing(db_url: str, conn: Conn) -> None:
    before = fingerprint(conn)

    report = migrate(db_url)

    assert report == MigrationReport(applied=[], triggers_applied=False)
    assert fingerprint(conn) == before
    assert pending(db_url) == []


def test_migrate_on_an_empty_database_applies_every_migration_then_nothing(
    empty_db_url: str,
) -> None:
    assert pending(empty_db_url) == ENGINE_MIGRATIONS
    assert pending(empty_db_url, [DYNAPHARM]) == ALL_MIGRATIONS

    first = migrate(empty_db_url, [DYNAPHARM])

    assert first.applied == ALL_MIGRATIONS
    assert first.installed_apps == ["dynapharm"]
    assert first.triggers_applied is True  # and the digest of triggers.sql is recorded
    with db.connect(empty_db_url) as conn:
        assert file_sha256() in (recorded_digest(conn) or "")
        assert db_functions(conn) == file_functions()
        assert [
            r[0] for r in conn.execute("SELECT table_name FROM pgtide.sync_tracked ORDER BY 1")
        ] == DOMAIN_TABLES
        assert conn.execute("SELECT last_seq, open_xids FROM pgtide.sync_sequencer").fetchall() == [
            (0, [])
        ]
        assert conn.execute("SELECT last_value FROM pgtide.sync_doorbell").fetchall() == [(1,)]
        capture_works(conn)
        before = fingerprint(conn)

    second = migrate(empty_db_url, [DYNAPHARM])

    assert second == MigrationReport(applied=[], triggers_applied=False)
    with db.connect(empty_db_url) as conn:
        assert fingerprint(conn) == before
    assert pending(empty_db_url, [DYNAPHARM]) == []


def test_concurrent_migrations_of_an_empty_database_apply_each_migration_once(
    empty_db_url: str,
) -> None:
    reports: list[MigrationReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(migrate(empty_db_url, [DYNAPHARM]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert sorted(m for r in reports for m in r.applied) == ALL_MIGRATIONS
    assert sum(r.triggers_applied for r in reports) == 1
    with db.connect(empty_db_url) as conn:
        assert db_functions(conn) == file_functions()
        capture_works(conn)


# --- triggers.sql in the database


def test_functions_in_the_database_match_triggers_sql(conn: Conn) -> None:
    assert db_functions(conn) == file_functions()
    assert file_sha256() in (recorded_digest(conn) or "")


def test_guard_triggers_are_installed_on_sync_log_and_sync_order(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger"
        " WHERE tgfoid = 'pgtide.append_only_v1()'::regprocedure ORDER BY 1, 2"
    ).fetchall()
    assert rows == [
        ("pgtide.sync_log", "sync_log_append_only", "O"),
        ("pgtide.sync_log", "sync_log_no_truncate", "O"),
        ("pgtide.sync_order", "sync_order_append_only", "O"),
        ("pgtide.sync_order", "sync_order_no_truncate", "O"),
        ("pgtide.sync_seal", "sync_seal_append_only", "O"),
        ("pgtide.sync_seal", "sync_seal_no_truncate", "O"),
    ]


def test_a_changed_digest_reapplies_triggers_sql(db_url: str, conn: Conn) -> None:
    conn.execute("COMMENT ON SCHEMA pgtide IS 'triggers.sql sha256:stale'")

    assert migrate(db_url) == MigrationReport(applied=[], triggers_applied=True)

    assert file_sha256() in (recorded_digest(conn) or "")
    assert migrate(db_url).triggers_applied is False


def test_reapplying_triggers_sql_repairs_a_broken_capture_function(db_url: str, conn: Conn) -> None:
    conn.execute(
        "CREATE OR REPLACE FUNCTION pgtide.capture_v2() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RAISE EXCEPTION 'capture is broken'; END $$"
    )
    with pytest.raises(psycopg.errors.RaiseException, match="capture is broken"):
        capture_works(conn)
    conn.execute("COMMENT ON SCHEMA pgtide IS NULL")  # forget the recorded digest

    assert migrate(db_url).triggers_applied is True

    assert db_functions(conn) == file_functions()
    capture_works(conn)


def test_reapplying_triggers_sql_keeps_tracked_user_tables(db_url: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE shelf (region text, n int, qty int, PRIMARY KEY (region, n))")
    conn.execute("SELECT pgtide.track_v1('shelf')")
    conn.execute("SELECT pgtide.untrack_v1('distributors')")
    tracked = conn.execute("SELECT * FROM pgtide.sync_tracked ORDER BY 1, 2").fetchall()
    conn.execute("COMMENT ON SCHEMA pgtide IS NULL")

    assert migrate(db_url).triggers_applied is True

    assert conn.execute("SELECT * FROM pgtide.sync_tracked ORDER BY 1, 2").fetchall() == tracked
    conn.execute("INSERT INTO shelf VALUES ('eu', 1, 2)")
    branch = conn.execute(
        "INSERT INTO branches (code, name) VALUES ('D', 'D') RETURNING id"
    ).fetchone()
    assert branch is not None
    conn.execute("INSERT INTO distributors (branch_id, name) VALUES (%s, 'Acme')", (branch[0],))
    rows = conn.execute("SELECT table_name, pk FROM pgtide.sync_log ORDER BY id").fetchall()
    assert [t for t, _ in rows] == ["shelf", "branches"]  # distributors stays untracked
    assert rows[0][1] == {"region": "eu", "n": 1}


def test_triggers_sql_can_be_run_twice_in_a_row(conn: Conn) -> None:
    text = triggers_sql().encode()  # bytes: no placeholder parsing
    conn.execute(text)
    conn.execute(text)
    assert db_functions(conn) == file_functions()
    capture_works(conn)


def test_reapplying_triggers_sql_reattaches_capture_to_tracked_tables(db_url: str) -> None:
    """A database tracked under an older trigger layout is brought up to date."""
    with db.connect(db_url) as conn:
        conn.execute(b"CREATE TABLE mine (id int PRIMARY KEY); SELECT pgtide.track_v1('mine')")
        # Simulate an old layout: the trigger's arguments are the key columns only.
        conn.execute(
            b"DROP TRIGGER pgtide_capture ON mine;"
            b"CREATE TRIGGER pgtide_capture AFTER INSERT OR UPDATE OR DELETE ON mine"
            b" FOR EACH ROW EXECUTE FUNCTION pgtide.capture_v1('id');"
            b"COMMENT ON SCHEMA pgtide IS 'stale';"
        )
    report = migrate(db_url)
    assert report.triggers_applied
    with db.connect(db_url) as conn:
        conn.execute("INSERT INTO mine VALUES (1)")
        row = conn.execute("SELECT schema_name, table_name, pk FROM pgtide.sync_log").fetchone()
    assert row == ("public", "mine", {"id": 1})
