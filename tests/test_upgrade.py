"""Upgrading in place a database migrated by the release before schema `pgtide`.

tests/legacy_schema/ holds that release's migrations, verbatim: engine, yoyo's
bookkeeping and the domain all in `public`. A database is built with them, given a
sequenced and sealed log, tokens, an idempotency key and a pushed mutation, then
upgraded by today's `migrate` (stop, migrate, start: the documented upgrade).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from yoyo import get_backend, read_migrations

from api.apps import load_app
from cdc import db, tokens
from cdc.migrate import migrate
from cdc.seal import verify
from tests.conftest import drop_database, with_dbname
from tests.live import Server, Stream
from tests.sequencing import sequence_all

LEGACY = Path(__file__).with_name("legacy_schema")
ENGINE_TABLES = {
    "sync_log", "sync_order", "sync_sequencer", "sync_tracked", "sync_idempotency",
    "sync_mutations", "sync_clocks", "sync_seal", "sync_retention", "sync_tokens",
}  # fmt: skip
DOMAIN = {"branches", "clients", "appointments", "orders", "stock_requests",
          "distributors", "products"}  # fmt: skip
COUNTED = ("sync_log", "sync_order", "sync_seal", "sync_tokens", "sync_idempotency",
           "sync_mutations", "sync_tracked")  # fmt: skip

# What the release's sequencer did per batch, in its own names (search_path public).
LEGACY_SEQUENCE = """
WITH batch AS (
    SELECT row_number() OVER (ORDER BY id) + (SELECT last_seq FROM sync_sequencer) AS seq,
           id AS log_id
      FROM sync_log WHERE id NOT IN (SELECT log_id FROM sync_order)
), ins AS (
    INSERT INTO sync_order (seq, log_id) SELECT seq, log_id FROM batch RETURNING seq, log_id
), seal AS (
    INSERT INTO sync_seal
    SELECT * FROM pgtide.seal_row_v1(
        (SELECT array_agg(seq ORDER BY seq) FROM batch),
        (SELECT array_agg(log_id ORDER BY seq) FROM batch))
)
UPDATE sync_sequencer SET last_seq = last_seq + (SELECT count(*) FROM batch),
       next_xid = pg_snapshot_xmax(pg_current_snapshot())
"""


def legacy_yoyo_url(url: str) -> str:
    params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    dbname = params.pop("dbname", "")
    return f"postgresql+psycopg:///{dbname}?{urlencode(params)}"


def build_legacy(url: str) -> dict[str, Any]:
    """A database as the previous release left it, with some history; what it holds."""
    backend = get_backend(legacy_yoyo_url(url))
    try:
        with backend.lock():
            backend.apply_migrations(backend.to_apply(read_migrations(str(LEGACY / "migrations"))))
    finally:
        backend.connection.close()
    reader = tokens.PREFIX + "legacy-reader-token-00000000000000000000000"  # 43, as made
    with db.connect(url) as conn:
        conn.execute((LEGACY / "demo.sql").read_text().encode())
        conn.execute(LEGACY_SEQUENCE)
        conn.execute("UPDATE orders SET status = 'paid' WHERE id IN "
                     "(SELECT id FROM orders ORDER BY id LIMIT 3)")  # fmt: skip
        conn.execute(LEGACY_SEQUENCE)
        branch = conn.execute("SELECT id FROM branches WHERE code = 'LIS'").fetchone()
        assert branch is not None
        conn.execute(
            "INSERT INTO sync_tokens (name, token_hash, scopes, branch_id) VALUES"
            " ('reader', %s, ARRAY['read', 'write'], NULL),"
            " ('lisbon', %s, ARRAY['read', 'write'], %s)",
            (tokens.hash_token(reader, None), tokens.hash_token(reader + "x", None), branch[0]),
        )
        conn.execute(
            "INSERT INTO sync_idempotency (scope, key, fingerprint, status, headers, body,"
            " expires_at) VALUES ('reader', 'k-1', 'fp', 201, '{}', '{}', now() + interval '1d')"
        )
        # A mutation pushed by token `reader` from client `tab-1`, as the release logged it.
        conn.execute(
            "SELECT set_config('pgtide.actor', 'reader', false),"
            " set_config('pgtide.mutation_id', 'm-legacy', false)"
        )
        client = conn.execute(
            "INSERT INTO clients (branch_id, full_name) VALUES (%s, 'Pushed') RETURNING id",
            (branch[0],),
        ).fetchone()
        assert client is not None
        conn.execute(
            "INSERT INTO sync_mutations (mutation_id, client_id, resource, op, row_id, txid)"
            " SELECT 'm-legacy', 'tab-1', 'clients', 'insert', %s, txid FROM sync_log"
            " WHERE mutation_id = 'm-legacy'",
            (client[0],),
        )
        conn.execute("RESET pgtide.actor; RESET pgtide.mutation_id")
        conn.execute(LEGACY_SEQUENCE)
        # A service's role that wrote tracked tables, granted what the release documented.
        role = sql.Identifier(WRITER)
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON branches TO {}").format(role))
        conn.execute(sql.SQL("GRANT INSERT ON sync_log TO {}").format(role))
        conn.execute(sql.SQL("GRANT SELECT ON sync_doorbell TO {}").format(role))
        counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("public", t))).fetchone() for t in COUNTED}  # fmt: skip
        rows = conn.execute("SELECT id, full_name, version FROM clients ORDER BY id").fetchall()
        last = conn.execute("SELECT last_seq FROM sync_sequencer").fetchone()
    return {"counts": counts, "clients": rows, "reader": reader, "last_seq": last,
            "client": str(client[0])}  # fmt: skip


def tables_in(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'S')",
        (schema,),
    ).fetchall()
    return {r[0] for r in rows}


WRITER = f"legacy_writer_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def legacy_url(server_url: str) -> Iterator[str]:
    name = f"pgtide_legacy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(WRITER)))
    try:
        yield with_dbname(server_url, name)
    finally:
        drop_database(server_url, name)
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(WRITER)))


def test_a_database_of_the_previous_release_upgrades_in_place(legacy_url: str) -> None:
    before = build_legacy(legacy_url)

    report = migrate(legacy_url, [load_app("dynapharm").install()])

    assert report.adopted_legacy
    # The rest was applied by the release.
    assert report.applied == ["0007_apps", "0008_guard", "0009_order_without_fk"]
    with db.connect(legacy_url) as conn:
        public = tables_in(conn, "public")
        assert public == DOMAIN  # engine tables and yoyo's bookkeeping left public
        assert ENGINE_TABLES | {"sync_doorbell", "sync_apps", "_yoyo_migration"} <= tables_in(
            conn, "pgtide"
        )
        for table, count in before["counts"].items():
            got = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier("pgtide", table))).fetchone()  # fmt: skip
            assert got == count, table
        rows = conn.execute("SELECT id, full_name, version FROM clients ORDER BY id").fetchall()
        assert rows == before["clients"]
        assert (
            conn.execute("SELECT last_seq FROM pgtide.sync_sequencer").fetchone()
            == (before["last_seq"])
        )
        assert conn.execute("SELECT name, ref FROM pgtide.sync_apps").fetchall() == [
            ("dynapharm", "dynapharm")
        ]
        report_v = verify(conn)
        assert report_v.problems == [], report_v.problems
        assert report_v.rows == before["last_seq"][0]
        # The pin kept its value (now text); the pushed mutation kept its sender.
        pin = conn.execute("SELECT branch_id FROM pgtide.sync_tokens WHERE name = 'lisbon'")
        branch = conn.execute("SELECT id::text FROM branches WHERE code = 'LIS'")
        assert pin.fetchone() == branch.fetchone()
        sender = conn.execute("SELECT sender FROM pgtide.sync_mutations").fetchall()
        assert sender == [("reader/tab-1",)]
        # The service's role still writes: it was given USAGE on the engine's new schema.
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(WRITER)))
            conn.execute("INSERT INTO branches (code, name) VALUES ('SVC', 'By a service')")

    # Idempotent, and nothing is adopted twice.
    again = migrate(legacy_url, [load_app("dynapharm").install()])
    assert not again.adopted_legacy and again.applied == [] and not again.triggers_applied

    # Serve it: the token still works, the log streams from cursor 0 with the same seqs,
    # a new write is sequenced and sealed after the old ones, the old mutation id is known.
    server = Server(legacy_url, auth=True).start()
    try:
        auth = {"Authorization": f"Bearer {before['reader']}"}
        listed = httpx.get(f"{server.base}/api/clients?limit=1", headers=auth, timeout=30)
        assert listed.status_code == 200, listed.text
        pushed = httpx.post(f"{server.base}/api/sync/push", headers=auth, timeout=30, json={
            "client_id": "tab-1", "mutations": [{
                "mutation_id": "m-legacy", "resource": "clients", "op": "insert",
                "id": before["client"], "data": {"full_name": "Pushed",
                                                 "branch_id": str(uuid.uuid4())}}]})  # fmt: skip
        assert pushed.json()["results"][0]["status"] == "duplicate", pushed.text
        made = httpx.post(f"{server.base}/api/branches", headers=auth, timeout=30,
                          json={"code": "NEW", "name": "After the upgrade"})  # fmt: skip
        assert made.status_code == 201, made.text
        last = before["last_seq"][0]
        stream = Stream(server.base, f"/events?since={last - 2}", auth)
        try:
            events = stream.changes(4)
        finally:
            stream.close()
        assert [e["seq"] for e in events] == [last - 1, last, last + 1, last + 2]
        assert [e["row"]["code"] for e in events[2:]] == ["SVC", "NEW"]
    finally:
        server.stop()
    sequence_all(legacy_url)
    with db.connect(legacy_url) as conn:
        report_v = verify(conn)
        assert report_v.problems == [] and report_v.rows == last + 2
