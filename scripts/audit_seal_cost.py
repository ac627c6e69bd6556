"""What sealing costs the sequencer (docs/audit.md): sequence_batch with and without its seal.

    python scripts/audit_seal_cost.py --url postgresql://postgres@127.0.0.1:5432/postgres

In a scratch database (dropped at the end), --txns single-row transactions are
committed on a tracked table and left unsequenced. Then, for batches of 1, 10,
100 and 1,000 of them, the shipped `sequence_batch` statement and the same
statement minus its sealing CTEs (cut out of cdc/queries.sql at the markers)
run alternately --repeat times each, every run inside a transaction that is
rolled back and prepared (as psycopg prepares the sequencer's after 5 runs):
the statement's own work, without the commit's fsync, which on a
shared machine varies more than the difference measured. Writers are not
involved: sealing happens only in the sequencer's statement.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.apps import load_app
from cdc import db
from cdc.migrate import migrate
from cdc.queries import queries

SEALED = queries["sequence_batch"]
# The statement without its seal CTE: what sequence_batch was before sealing.
UNSEALED = re.sub(r"\), seal AS \(.*?\), upd AS \(", "), upd AS (", SEALED, flags=re.S)


def with_db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo("", **params)


def run_once(conn: psycopg.Connection[Any], text: str, txids: list[str], xmax: str) -> float:
    """One sequence_batch of `txids`, rolled back; seconds."""
    params = {"last_seq": 0, "txids": txids, "next_xid": xmax, "open_xids": []}
    with conn.transaction(force_rollback=True):
        start = time.perf_counter()
        rows = conn.execute(text, params, prepare=True).fetchall()
        took = time.perf_counter() - start
    assert len(rows) == len(txids)
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--txns", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=25)
    args = ap.parse_args()
    assert UNSEALED != SEALED, "could not cut the sealing CTEs out of sequence_batch"
    name = "pgtide_audit_seal_cost"
    url = with_db(args.url, name)
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        migrate(url, [load_app("dynapharm").install()])  # the demo tables too
        with db.connect(url) as conn:
            conn.execute(
                b"CREATE TABLE t (id int PRIMARY KEY, v text, n int, note text);"
                b"SELECT pgtide.track_v1('t')"
            )
            for i in range(args.txns):
                conn.execute("INSERT INTO t VALUES (%s, 'x', %s, 'a short note')", (i, i))
            conn.execute("VACUUM ANALYZE")
            txids = [
                r[0] for r in conn.execute("SELECT txid::text FROM pgtide.sync_log ORDER BY id")
            ]
            row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
            assert row is not None
            xmax = str(row[0])
            print(f"{args.txns:,} single-row transactions, {args.repeat} runs each, medians\n")
            print("| batch | without seal | with seal | sealing adds | per row |")
            print("| ---: | ---: | ---: | ---: | ---: |")
            for size in (1, 10, 100, 1000):
                if size > len(txids):
                    break
                took: dict[str, list[float]] = {"with": [], "without": []}
                for _ in range(args.repeat):
                    took["with"].append(run_once(conn, SEALED, txids[:size], xmax))
                    took["without"].append(run_once(conn, UNSEALED, txids[:size], xmax))
                a = statistics.median(took["without"]) * 1e6
                b = statistics.median(took["with"]) * 1e6
                print(f"| {size:,} | {a:,.0f} µs | {b:,.0f} µs | {b - a:,.0f} µs "
                      f"| {(b - a) / size:,.1f} µs |", flush=True)  # fmt: skip
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(drop)


if __name__ == "__main__":
    main()
