"""The audit filters, verify and retention on a large generated log (docs/audit.md).

    python scripts/audit_perf.py --url postgresql://postgres@127.0.0.1:5432/postgres --rows 10000000

Creates a scratch database (dropped at the end unless --keep), migrates it, and
writes --rows changes straight into pgtide.sync_log (seven tables of skewed sizes, uuid
keys changed about five times each over the log, 1,000 actors on a skewed
distribution plus one rare actor, 50 origins, a tenth of the changes without
actor or origin, 30 days of timestamps), sequences them into pgtide.sync_order and
seals them 100 rows a seal, as the sequencer would. Then it times:

1. the main listing filters through `cdc.audit.list_changes` (the code the API
   and CLI run; median of --repeat warm runs), with the plan's indexes;
2. a row's history;
3. `pgtide audit verify` over the whole chain;
4. retention: `run_retention` removing one day, against dropping one day's
   partition of a copy of the log partitioned by day (time and WAL).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.apps import load_app
from cdc import audit, seal
from cdc.audit import LogQuery, list_changes
from cdc.migrate import migrate, schema_dir
from cdc.retention import run_retention

AUDIT_INDEXES = [
    "sync_log_table_pk_idx", "sync_log_actor_at_idx", "sync_log_origin_at_idx",
    "sync_log_truncate_idx", "sync_log_txid_idx",
]  # fmt: skip

# Tables by share of the log: orders 30 %, ..., branches 0.01 % (a rare table).
GENERATE = """
INSERT INTO pgtide.sync_log (txid, at, schema_name, table_name, op, pk, new_row, old_row, changed,
                      actor, origin, mutation_id, db_role)
SELECT (g / 3 + 3)::text::xid8,
       now() - interval '30 days' + g * (interval '30 days' / {total}),
       'public', t.name, o.op,
       CASE WHEN o.op IN ('TRUNCATE', 'MESSAGE') THEN NULL ELSE jsonb_build_object('id', k.id) END,
       CASE WHEN o.op IN ('INSERT', 'UPDATE') THEN jsonb_build_object(
           'id', k.id, 'branch_id', 'branch-' || (g % 50), 'status', 's' || (g % 6),
           'total', (g % 10000) / 100.0, 'version', g % 9 + 1, 'note', 'note ' || (g % 997))
       END,
       CASE WHEN o.op IN ('UPDATE', 'DELETE') THEN jsonb_build_object(
           'id', k.id, 'branch_id', 'branch-' || (g % 50), 'status', 's' || ((g + 1) % 6),
           'total', (g % 10000) / 100.0, 'version', g % 9, 'note', 'note ' || (g % 997))
       END,
       CASE WHEN o.op = 'UPDATE' THEN ARRAY['status', 'version'] END,
       CASE WHEN g % 10 = 0 THEN NULL
            WHEN g % 200000 = 7 THEN 'rare-auditor'
            ELSE 'user-' || floor(1000 * power(((g * 7919) % 10007) / 10007.0, 3))::int END,
       CASE WHEN g % 10 = 1 THEN NULL ELSE 'branch-' || (g % 50) END,
       'm-' || g, 'pgtide_api'
  FROM generate_series({lo}::bigint, {hi}::bigint) AS g
 CROSS JOIN LATERAL (SELECT CASE
           WHEN g % 10000 < 3000 THEN 'orders'
           WHEN g % 10000 < 5000 THEN 'clients'
           WHEN g % 10000 < 7000 THEN 'appointments'
           WHEN g % 10000 < 8500 THEN 'products'
           WHEN g % 10000 < 9500 THEN 'stock_requests'
           WHEN g % 10000 < 9999 THEN 'distributors'
           ELSE 'branches' END AS name) AS t
 CROSS JOIN LATERAL (SELECT CASE
           WHEN g % 1000003 = 5 THEN 'TRUNCATE'
           WHEN g % 1000 = 1 THEN 'MESSAGE'
           WHEN g % 10 < 4 THEN 'INSERT'
           WHEN g % 10 < 9 THEN 'UPDATE'
           ELSE 'DELETE' END AS op) AS o
 CROSS JOIN LATERAL (SELECT md5(t.name || ((g * 7919) % ({total} / 5)))::uuid AS id) AS k
"""

SEQUENCE = """
INSERT INTO pgtide.sync_order (seq, log_id)
SELECT id, id FROM pgtide.sync_log WHERE id BETWEEN {lo} AND {hi}
"""

# Seal what GENERATE wrote, 100 rows a seal, chained exactly as sequence_batch does.
SEAL = """
DO $$
DECLARE
    lo bigint := (SELECT max(last_seq) FROM pgtide.sync_seal);
    head bigint := (SELECT max(seq) FROM pgtide.sync_order);
    n bigint := (SELECT max(seal_no) FROM pgtide.sync_seal);
    prev bytea := (SELECT hash FROM pgtide.sync_seal ORDER BY seal_no DESC LIMIT 1);
    stamp timestamptz := (SELECT sealed_at FROM pgtide.sync_seal ORDER BY seal_no DESC LIMIT 1);
BEGIN
    WHILE lo < head LOOP
        n := n + 1;
        INSERT INTO pgtide.sync_seal (seal_no, first_seq, last_seq, hash, prev_hash, digests,
                               min_at, max_at, sealed_at)
        SELECT n, min(s.seq), max(s.seq),
               sha256(prev || string_agg(s.d, ''::bytea ORDER BY s.seq)), prev,
               string_agg(substr(s.d, 1, 8), ''::bytea ORDER BY s.seq),
               min(s.at), max(s.at), max(s.at) + interval '5 milliseconds'
          FROM (SELECT o.seq, pgtide.log_digest_v1(o.seq, l) AS d, l.at
                  FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id
                 WHERE o.seq > lo AND o.seq <= least(lo + 100, head)) AS s
        RETURNING hash, sealed_at INTO prev, stamp;
        lo := lo + 100;
    END LOOP;
END
$$
"""


def with_db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo("", **params)


def run_sql(conn: psycopg.Connection[Any], text: str) -> Callable[[], Any]:
    """A thunk running `text` (no parameters, so `%` is literal)."""
    return lambda: conn.execute(text.encode())


def timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {time.perf_counter() - start:.1f}s", flush=True)
    return result


def generate(conn: psycopg.Connection[Any], total: int) -> None:
    """Write, sequence and seal `total` changes; audit indexes are built after the load."""
    for name in AUDIT_INDEXES:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute("ALTER TABLE pgtide.sync_order DROP CONSTRAINT sync_order_log_id_fkey")
    chunk = 1_000_000
    for lo in range(1, total + 1, chunk):
        hi = min(lo + chunk - 1, total)
        text = GENERATE.format(lo=lo, hi=hi, total=total)
        timed(f"  rows {lo:,}..{hi:,}", run_sql(conn, text))
    for lo in range(1, total + 1, chunk * 5):
        hi = min(lo + chunk * 5 - 1, total)
        conn.execute(SEQUENCE.format(lo=lo, hi=hi).encode())
    # As if a sequencer had sequenced all of it (the generated txids are all below next_xid).
    conn.execute(
        "UPDATE pgtide.sync_sequencer SET last_seq = %s, "
        "next_xid = (SELECT max(txid::text::bigint) + 1 FROM pgtide.sync_log)::text::xid8",
        (total,),
    )
    timed("  foreign key", lambda: conn.execute(
        "ALTER TABLE pgtide.sync_order ADD FOREIGN KEY (log_id) "
        "REFERENCES pgtide.sync_log (id)"))  # fmt: skip
    migration = (schema_dir() / "migrations" / "0005_audit.sql").read_text()
    # The very statements of the migration.
    for match in re.finditer(r"CREATE INDEX (sync_log_\w+) ON pgtide.sync_log [^;]*", migration):
        timed(f"  CREATE INDEX {match.group(1)}", run_sql(conn, match.group(0)))
    timed("  CREATE INDEX sync_log_txid_idx", lambda: conn.execute(
        "CREATE INDEX sync_log_txid_idx ON pgtide.sync_log (txid, id)"))  # fmt: skip
    timed("  seal 100 rows a seal", lambda: conn.execute(SEAL.encode()))
    timed("  VACUUM ANALYZE", lambda: conn.execute("VACUUM ANALYZE"))


def sizes(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT c.relname, pg_size_pretty(pg_relation_size(c.oid)), pg_relation_size(c.oid) "
        "FROM pg_class c WHERE c.relname LIKE 'sync_%' AND c.relkind IN ('r', 'i') "
        "ORDER BY pg_relation_size(c.oid) DESC"
    ).fetchall()
    print("\n| relation | size |\n| --- | ---: |")
    for name, pretty, _ in rows:
        print(f"| {name} | {pretty} |")


def plan_of(conn: psycopg.Connection[Any], q: LogQuery) -> str:
    """The indexes the listing statement's plan uses (EXPLAIN of the very statement)."""
    pk = None
    if q.pk and q.tables:
        pk = audit.row_key(audit.key_of(conn, q.tables[0]), q.tables[0], q.pk)
    floor = ceiling = None
    if q.start is not None:
        floor = audit._scalar(
            conn.execute(audit.audit_queries["seq_floor"], {"at": q.start}).fetchone()
        )
    if q.end is not None:
        ceiling = audit._scalar(
            conn.execute(audit.audit_queries["seq_ceiling"], {"at": q.end}).fetchone()
        )
    stmt = sql.SQL("EXPLAIN (FORMAT JSON) ") + audit._list_sql(q)
    with conn.transaction():
        conn.execute(audit.audit_queries["serial_plans"])
        params = audit._list_params(q, pk, floor, ceiling)
        plan = conn.execute(stmt, params, prepare=False).fetchone()
    assert plan is not None
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        name = node.get("Index Name")
        if name and name not in found:
            found.append(name)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0][0]["Plan"])
    return ", ".join(found)


def bench_queries(conn: psycopg.Connection[Any], repeat: int) -> None:
    row = conn.execute(
        "SELECT pk::text FROM pgtide.sync_log WHERE table_name = 'orders' AND pk IS NOT NULL "
        "AND id = (SELECT max(id) / 2 FROM pgtide.sync_log) "
        "- (SELECT max(id) / 2 FROM pgtide.sync_log) % 10 + 3"
    ).fetchone()
    key = row[0] if row else '{"id": "00000000-0000-0000-0000-000000000000"}'
    txid_row = conn.execute("SELECT txid::text FROM pgtide.sync_log WHERE id = 5000000").fetchone()
    txid = txid_row[0] if txid_row else "3"
    now_row = conn.execute("SELECT now()").fetchone()
    assert now_row is not None
    now: datetime = now_row[0]

    def ago(**kw: float) -> str:
        return (now - timedelta(**kw)).isoformat()

    mid = conn.execute("SELECT max(seq) / 2 FROM pgtide.sync_order").fetchone()
    middle = str(mid[0]) if mid else "1"
    cases: list[tuple[str, list[tuple[str, str]]]] = [
        ("newest page, no filter", [("order", "desc")]),
        ("oldest page, no filter", []),
        ("page after a cursor mid-log", [("after", middle)]),
        ("table=orders (30 %), newest", [("table", "orders"), ("order", "desc")]),
        ("table=branches (0.01 %), newest", [("table", "branches"), ("order", "desc")]),
        ("table + pk (one row's changes)", [("table", "orders"), ("pk", key)]),
        ("actor (frequent), newest", [("actor", "user-0"), ("order", "desc")]),
        ("actor (typical), newest", [("actor", "user-500"), ("order", "desc")]),
        ("actor (rare), newest", [("actor", "rare-auditor"), ("order", "desc")]),
        ("actor never seen", [("actor", "nobody")]),
        ("origin, newest", [("origin", "branch-17"), ("order", "desc")]),
        ("op=delete, newest", [("op", "delete"), ("order", "desc")]),
        ("op=truncate", [("op", "truncate")]),
        ("txid", [("txid", txid)]),
        ("from = 2 h ago", [("from", ago(hours=2))]),
        ("to = 20 days ago, newest", [("to", ago(days=20)), ("order", "desc")]),
        ("from/to: one hour 15 days ago", [("from", ago(days=15)), ("to", ago(days=15, hours=-1))]),
        ("actor + since 2 h", [("actor", "user-3"), ("from", ago(hours=2))]),
        (
            "actor (typical) + a day 10 days ago",
            [("actor", "user-500"), ("from", ago(days=10)), ("to", ago(days=9))],
        ),
        (
            "origin + op + since 1 day",
            [("origin", "branch-4"), ("op", "update"), ("from", ago(days=1))],
        ),
        (
            "table (rare) + op + to 10 days ago",
            [("table", "branches"), ("op", "insert"), ("to", ago(days=10)), ("order", "desc")],
        ),
    ]
    print("\n| filter (limit 100) | rows | median ms | plan's indexes |")
    print("| --- | ---: | ---: | --- |")
    for label, params in cases:
        q = audit.parse_query(params)
        times, n = [], 0
        for _ in range(repeat):
            start = time.perf_counter()
            page = list_changes(conn, q)
            times.append((time.perf_counter() - start) * 1000)
            n = len(page.changes)
        print(
            f"| {label} | {n} | {statistics.median(times):.1f} | {plan_of(conn, q)} |", flush=True
        )
    pk = audit.row_key(audit.key_of(conn, "orders"), "orders", key)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        entries = audit.history(conn, "orders", pk)
        times.append((time.perf_counter() - start) * 1000)
    print(f"| history of one orders row | {len(entries)} | {statistics.median(times):.1f} | "
          "sync_log_table_pk_idx, sync_log_truncate_idx |")  # fmt: skip


def lsn(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


# A copy of the log partitioned by day, the days counted from its oldest change, so that
# its first partition holds exactly the changes a one-day retention step removes.
PARTITIONED = """
CREATE TABLE part_log (LIKE pgtide.sync_log INCLUDING DEFAULTS) PARTITION BY RANGE (at);
DO $$
DECLARE
    origin timestamptz := (SELECT min(at) FROM pgtide.sync_log);
BEGIN
    FOR k IN 0..31 LOOP
        EXECUTE format(
            'CREATE TABLE part_log_%s PARTITION OF part_log FOR VALUES FROM (%L) TO (%L)',
            k, origin + k * interval '1 day', origin + (k + 1) * interval '1 day');
    END LOOP;
    CREATE TABLE part_log_rest PARTITION OF part_log DEFAULT;
END $$;
INSERT INTO part_log SELECT * FROM pgtide.sync_log;
CREATE INDEX ON part_log (id);
CREATE INDEX ON part_log (txid, id);
CREATE INDEX ON part_log (table_name, pk);
CREATE INDEX ON part_log (actor, at) WHERE actor IS NOT NULL;
CREATE INDEX ON part_log (origin, at) WHERE origin IS NOT NULL;
CHECKPOINT;
"""

SLOT = "pgtide_audit_perf"

# This database's WAL since a position, read back from the WAL (others' not counted).
DB_WAL = """
SELECT coalesce(sum(record_length), 0)
  FROM pg_get_wal_records_info(%s::pg_lsn, pg_current_wal_flush_lsn())
 WHERE substring(block_ref from 'rel [0-9]+/([0-9]+)/')::oid =
       (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def measured(conn: psycopg.Connection[Any], fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Run `fn`: its result, seconds, and this database's WAL bytes (a slot keeps the WAL)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
        (SLOT,),
    )
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
    try:
        start = lsn(conn)
        began = time.perf_counter()
        result = fn()
        took = time.perf_counter() - began
        row = conn.execute(DB_WAL, (start,)).fetchone()
        return result, took, int(row[0]) if row else 0
    finally:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))


def bench_retention(conn: psycopg.Connection[Any]) -> None:
    """Remove the oldest day: by retention (batched DELETE) and by dropping a partition."""
    timed("copy into a log partitioned by day", run_sql(conn, PARTITIONED))
    first = conn.execute("SELECT count(*) FROM part_log_0").fetchone()
    assert first is not None

    def drop() -> None:
        conn.execute("ALTER TABLE part_log DETACH PARTITION part_log_0")
        conn.execute("DROP TABLE part_log_0")

    _, took, wal = measured(conn, drop)
    print(f"\nretention (drop partition): {first[0]:,} rows in {took * 1000:.0f} ms, "
          f"WAL {wal / 2**10:,.0f} KiB")  # fmt: skip
    conn.execute("DROP TABLE part_log")

    conn.execute("CHECKPOINT")
    keep = conn.execute(
        "SELECT now() - (min(at) + interval '1 day') FROM pgtide.sync_log"
    ).fetchone()
    assert keep is not None
    report, took, wal = measured(conn, lambda: run_retention(conn, keep[0], batch=10_000))
    per_batch = took / max(report.batches, 1) * 1000
    print(f"retention (delete): {report.removed_rows:,} rows in {report.batches} batches of "
          f"10,000, {took:.1f}s ({report.removed_rows / took:,.0f} rows/s, {per_batch:.0f} ms "
          f"a batch), WAL {wal / 2**20:,.0f} MiB")  # fmt: skip
    _, took, wal = measured(conn, lambda: conn.execute("VACUUM pgtide.sync_log, pgtide.sync_order"))
    print(f"VACUUM after it: {took:.1f}s, WAL {wal / 2**20:,.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the database (and reuse it)")
    ap.add_argument("--skip", default="", help="comma-separated: queries, verify, retention")
    args = ap.parse_args()
    name = "pgtide_audit_perf"
    url = with_db(args.url, name)
    skip = set(args.skip.split(","))
    with psycopg.connect(args.url, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not (exists and args.keep):
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            exists = None
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            if not exists:
                migrate(url, [load_app("dynapharm").install()])  # the demo tables too
                timed(f"generate {args.rows:,} changes", lambda: generate(conn, args.rows))
            sizes(conn)
            if "queries" not in skip:
                bench_queries(conn, args.repeat)
            if "verify" not in skip:
                report = timed("\nverify", lambda: seal.verify(conn))
                print(f"  intact={report.intact} seals={report.seals:,} rows={report.rows:,}")
            if "retention" not in skip:
                bench_retention(conn)
    finally:
        if not args.keep:
            with psycopg.connect(args.url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


if __name__ == "__main__":
    main()
