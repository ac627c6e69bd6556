"""What each candidate audit index on pgtide.sync_log costs tracked writers (docs/audit.md).

    python scripts/audit_writes.py --url postgresql://postgres@127.0.0.1:5432/postgres

Creates a scratch database (dropped at the end), migrates it, pre-fills pgtide.sync_log
with --prefill realistic rows (uuid keys, 7 tables, 200 actors, 20 origins) so
indexes are not toy-sized, then runs pgbench: --clients concurrent single-row
INSERT transactions on a tracked table, each setting pgtide.actor and
pgtide.origin as the API does. The doorbell flag is held at 0 (a busy
sequencer) so NOTIFY does not serialise commits and only the capture path is
measured. Configurations run interleaved for --rounds rounds, each a fixed
number of transactions after a CHECKPOINT. Per configuration the table gives
the median inserts/s and its ratio to the capture baseline (no audit index), and
costs that do not depend on what else loads the machine (it is shared): the WAL
written per insert for this database's relations only (read back with
pg_walinspect from the WAL itself and attributed by block reference, full-page
images included, as after any checkpoint), the part of it that the audit
indexes wrote, and how much those indexes grew per insert.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.apps import load_app
from cdc.migrate import migrate

AUDIT_INDEXES = {
    "table_pk": "CREATE INDEX sync_log_table_pk_idx ON pgtide.sync_log (table_name, pk)",
    "pk_gin": "CREATE INDEX sync_log_pk_gin ON pgtide.sync_log USING gin (pk jsonb_path_ops)",
    "pk_hash": "CREATE INDEX sync_log_pk_hash ON pgtide.sync_log USING hash (pk)",
    "actor_at": "CREATE INDEX sync_log_actor_at_idx ON pgtide.sync_log (actor, at) "
    "WHERE actor IS NOT NULL",
    "origin_at": "CREATE INDEX sync_log_origin_at_idx ON pgtide.sync_log (origin, at) "
    "WHERE origin IS NOT NULL",
    "truncate": "CREATE INDEX sync_log_truncate_idx ON pgtide.sync_log (table_name) "
    "WHERE op = 'TRUNCATE'",
    "at_btree": "CREATE INDEX sync_log_at_idx ON pgtide.sync_log (at)",
    "at_brin": "CREATE INDEX sync_log_at_brin ON pgtide.sync_log USING brin (at)",
}
CHOSEN = ("table_pk", "actor_at", "origin_at", "truncate")
CONFIGS: dict[str, tuple[str, ...]] = {
    "untracked table": (),
    "tracked, no audit index": (),
    **{f"+ {name}": (name,) for name in AUDIT_INDEXES},
    "+ chosen set (0005_audit)": CHOSEN,
}

SCRIPT = r"""
\set a random(1, 200)
\set o random(1, 20)
BEGIN;
SELECT set_config('pgtide.actor', 'actor-' || :a, true),
       set_config('pgtide.origin', 'branch-' || :o, true);
INSERT INTO {table} (note) VALUES ('a short note');
COMMIT;
"""

TABLE = "CREATE TABLE {table} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), note text)"

PREFILL = """
INSERT INTO pgtide.sync_log (txid, at, schema_name, table_name, op, pk, new_row, actor, origin)
SELECT '1'::xid8, now() - (g * interval '1 second'), 'public', 't' || (g %% 7),
       'INSERT', jsonb_build_object('id', gen_random_uuid()),
       jsonb_build_object('note', 'a short note', 'n', g),
       'actor-' || (g %% 200), 'branch-' || (g %% 20)
  FROM generate_series(1, %(n)s) g
"""


def with_db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo("", **params)


def run(url: str, script: Path, clients: int, txns: int) -> float:
    out = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 4)),
         "-t", str(txns), "-f", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"tps = ([0-9.]+)", out)
    assert match, out
    return float(match.group(1))


def measure(url: str, script: Path, clients: int, txns: int, indexes: tuple[str, ...]) -> Sample:
    """One run: inserts/s, WAL bytes per insert (all, audit indexes), index growth per insert."""
    names = [AUDIT_INDEXES[i].split()[2] for i in indexes]
    size = "SELECT coalesce(sum(pg_relation_size(c::regclass)), 0) FROM unnest(%s::text[]) c"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        # The slot keeps the run's WAL from being recycled before it is read back: on a
        # shared server, others' writes bring checkpoints during the run.
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (SLOT,))
        try:
            before = conn.execute(size, (names,)).fetchone()
            start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
            assert before is not None and start is not None
            rate = run(url, script, clients, txns)
            after = conn.execute(size, (names,)).fetchone()
            rows = conn.execute(WAL_BY_RELATION, {"start": start[0], "names": names}).fetchone()
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
    assert after is not None and rows is not None
    n = clients * txns
    return Sample(rate, float(rows[0]) / n, float(rows[1]) / n, float(after[0] - before[0]) / n)


SLOT = "pgtide_audit_writes"

# This database's WAL between two positions, read from the WAL itself: the records that
# touch one of its relations (block reference rel <tablespace>/<database>/<filenode>),
# and those that touch the given indexes. Other databases on the server are not counted.
WAL_BY_RELATION = """
WITH recs AS (
    SELECT record_length, substring(block_ref from 'rel [0-9]+/([0-9]+)/') ::oid AS db,
           substring(block_ref from 'rel [0-9]+/[0-9]+/([0-9]+)')::oid AS node
      FROM pg_get_wal_records_info(%(start)s::pg_lsn, pg_current_wal_flush_lsn())
)
SELECT coalesce(sum(record_length) FILTER (WHERE db = (SELECT oid FROM pg_database
                                                       WHERE datname = current_database())), 0),
       coalesce(sum(record_length) FILTER (WHERE node IN (
           SELECT pg_relation_filenode(c::regclass) FROM unnest(%(names)s::text[]) c)), 0)
  FROM recs
"""


@dataclass
class Sample:
    tps: float
    wal_per_insert: float
    index_wal_per_insert: float
    index_bytes_per_insert: float


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--txns", type=int, default=2500, help="transactions per client and run")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prefill", type=int, default=1_000_000)
    ap.add_argument("--only", help="config names separated by ; (default: all)")
    args = ap.parse_args()
    name = "pgtide_audit_writes"
    url = with_db(args.url, name)
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrate(url, [load_app("dynapharm").install()])  # the demo tables too
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("items", "plain"):
                conn.execute(TABLE.replace("{table}", table).encode())
            conn.execute("SELECT pgtide.track_v1('items')")
            for idx in ("table_pk", "actor_at", "origin_at", "truncate"):
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(
                    sql.Identifier(AUDIT_INDEXES[idx].split()[2])))  # fmt: skip
            conn.execute(PREFILL, {"n": args.prefill})
            conn.execute("VACUUM ANALYZE pgtide.sync_log")
            # A busy sequencer: no NOTIFY.
            conn.execute("SELECT setval('pgtide.sync_doorbell', 0, true)")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            # A slot left by a killed run would keep WAL forever.
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s",
                (SLOT,),
            )
        configs = CONFIGS
        if args.only:
            configs = {k: v for k, v in CONFIGS.items() if k in args.only.split(";")}
        results: dict[str, list[Sample]] = {k: [] for k in configs}
        with tempfile.TemporaryDirectory() as tmp:
            for rnd in range(args.rounds):
                for label, indexes in configs.items():
                    table = "plain" if label == "untracked table" else "items"
                    script = Path(tmp) / f"{table}.sql"
                    script.write_text(SCRIPT.replace("{table}", table))
                    with psycopg.connect(url, autocommit=True) as conn:
                        for idx in indexes:
                            conn.execute(AUDIT_INDEXES[idx].encode())
                    sample = measure(url, script, args.clients, args.txns, indexes)
                    results[label].append(sample)
                    with psycopg.connect(url, autocommit=True) as conn:
                        for idx in indexes:
                            ident = sql.Identifier(AUDIT_INDEXES[idx].split()[2])
                            conn.execute(sql.SQL("DROP INDEX {}").format(ident))
                    print(f"round {rnd + 1} {label}: {sample}", flush=True)
        base = results.get("tracked, no audit index") or [Sample(1.0, 1.0, 0.0, 0.0)]
        base_tps = statistics.median(s.tps for s in base)
        base_wal = statistics.median(s.wal_per_insert for s in base)
        print(f"\n{args.clients} clients x {args.txns} transactions, {args.rounds} rounds, "
              f"sync_log pre-filled with {args.prefill:,} rows\n")  # fmt: skip
        print("| configuration | inserts/s (median) | vs no audit index | WAL bytes/insert "
              "| vs no audit index | of which audit indexes | index bytes/insert |")  # fmt: skip
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, samples in results.items():
            rate = statistics.median(s.tps for s in samples)
            wal = statistics.median(s.wal_per_insert for s in samples)
            iwal = statistics.median(s.index_wal_per_insert for s in samples)
            grow = statistics.median(s.index_bytes_per_insert for s in samples)
            print(f"| {label} | {rate:,.0f} | {rate / base_tps:.2f} | {wal:,.0f} "
                  f"| {wal / base_wal:.2f} | {iwal:,.0f} | {grow:,.0f} |")  # fmt: skip
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(drop)


if __name__ == "__main__":
    main()
