"""What sealing costs the sequencer (docs/audit.md): sequence_batch with and without its seal.

    python scripts/audit_seal_cost.py --url postgresql://postgres@127.0.0.1:5432/postgres

In a scratch database (dropped at the end), on a tracked table: (a) the live
case, one single-row transaction committed then one sequencer pass, --txns
times (a batch and a seal per commit; only the passes are timed), and (b) a
backlog of --txns such transactions sequenced in batches of up to 5,000 rows.
Each is timed with
the shipped `sequence_batch` and with the same statement minus its sealing
CTEs (read from cdc/queries.sql and cut at the markers), alternating, --rounds
times; the table gives medians. Writers are not involved: sealing happens only
in the sequencer's statement.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc import db
from cdc.migrate import migrate
from cdc.queries import queries
from cdc.sequencer import Sequencer
from cdc.settings import Settings

SEALED = queries["sequence_batch"]
# The statement without the prev/unsealed/seal CTEs: what sequence_batch was before sealing.
UNSEALED = re.sub(r"\), prev AS \(.*?\), upd AS \(", "), upd AS (", SEALED, flags=re.S)


def with_db(url: str, name: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = name
    return make_conninfo("", **params)


def write(url: str, txns: int) -> None:
    with db.connect(url) as conn:
        conn.execute("TRUNCATE t")  # its own TRUNCATE is logged and sequenced too
        for i in range(txns):
            conn.execute("INSERT INTO t VALUES (%s, 'x')", (i,))


async def backlog(url: str, txns: int) -> float:
    """Commit `txns` transactions, then time sequencing them (5,000 rows a batch)."""
    write(url, txns)
    seq = Sequencer(url, Settings(batch_rows=5000))
    async with await db.aconnect(url) as conn:
        await seq._load_state(conn)
        start = time.perf_counter()
        done = 0
        while (result := await seq.discover(conn)).rows:
            done += result.rows
        took = time.perf_counter() - start
    assert done == txns + 1, (done, txns)
    return took


async def live(url: str, txns: int) -> float:
    """Commit one transaction, time the pass that sequences (and seals) it; `txns` times."""
    write(url, 0)
    seq = Sequencer(url, Settings())
    took = 0.0
    with db.connect(url) as writer:
        async with await db.aconnect(url) as conn:
            await seq._load_state(conn)
            await seq.discover(conn)  # the TRUNCATE
            for i in range(txns):
                writer.execute("INSERT INTO t VALUES (%s, 'x')", (i,))
                start = time.perf_counter()
                result = await seq.discover(conn)
                took += time.perf_counter() - start
                assert result.rows == 1
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--txns", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    assert UNSEALED != SEALED, "could not cut the sealing CTEs out of sequence_batch"
    name = "pgtide_audit_seal_cost"
    url = with_db(args.url, name)
    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(drop)
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    results: dict[tuple[str, str], list[float]] = {}
    try:
        migrate(url)
        with db.connect(url) as conn:
            conn.execute(
                b"CREATE TABLE t (id int PRIMARY KEY, v text); SELECT pgtide.track_v1('t')"
            )
        for _ in range(args.rounds):
            for variant, text in (("with seal", SEALED), ("without seal", UNSEALED)):
                queries["sequence_batch"] = text
                for mode, fn in (("one commit per batch", live), ("backlog, 5000/batch", backlog)):
                    took = asyncio.run(fn(url, args.txns))
                    results.setdefault((mode, variant), []).append(took)
                    print(f"{mode} {variant}: {took:.2f}s", flush=True)
    finally:
        queries["sequence_batch"] = SEALED
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(drop)
    print(f"\n{args.txns:,} single-row transactions, {args.rounds} rounds, medians\n")
    print("| sequencing | without seal | with seal | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for mode in ("one commit per batch", "backlog, 5000/batch"):
        a = statistics.median(results[(mode, "without seal")])
        b = statistics.median(results[(mode, "with seal")])
        n = args.txns
        print(f"| {mode} | {a / n * 1e6:,.0f} µs/row | {b / n * 1e6:,.0f} µs/row | {b / a:.2f} |")


if __name__ == "__main__":
    main()
