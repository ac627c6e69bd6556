"""8. The sequencer on a new database (a diagnostic, thorough mode only).

The sequencer's discovery selects `pgtide.sync_log` rows by `txid >= next_xid OR txid
= ANY(open_xids)`. On a table PostgreSQL has never analyzed, the planner takes
the default selectivity for `>=` (a third of the table) and scans the whole
log on every pass, so a new deployment's sequencer slows down as its log grows,
until autovacuum's first ANALYZE. This measures the sequencer's own PostgreSQL
backend (CPU time from /proc) per pass and per sequenced row while writer
processes insert at a fixed rate, with the log's statistics removed and then
after ANALYZE, on the same log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import psycopg

from bench.common import Ctx, Result, Row, cpu_seconds, median, sequenced, spread
from bench.load import RateWriters, create_table
from cdc.queries import queries
from cdc.sequencer import Sequencer
from cdc.settings import Settings

TITLE = "Sequencer on a new database (diagnostic)"
RATE = 1000.0
SECONDS = 3.0
INSERT = "INSERT INTO b_seq (v, note) VALUES (%s, 'seq') RETURNING id"


def _forget_statistics(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM pg_statistic WHERE starelid = 'pgtide.sync_log'::regclass")
        conn.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = 'pgtide.sync_log'::regclass")


async def _measure(url: str) -> tuple[float, float]:
    """(backend CPU µs per pass, per row) while writers insert RATE rows/s for SECONDS."""
    seq = Sequencer(url, Settings())
    task = asyncio.create_task(seq.run())
    try:
        await asyncio.wait_for(seq.leading.wait(), 30)
        app = f"pgtide-sequencer-{os.getpid()}"
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
            ).fetchone()
        assert row is not None
        backend = int(row[0])
        while True:  # start from a sequenced log
            logged, last = await asyncio.to_thread(sequenced, url)
            if last >= logged:
                break
            await asyncio.sleep(0.1)
        cpu0, passes0, rows0 = cpu_seconds(backend), seq.stats.passes, seq.stats.sequenced
        writers = await asyncio.to_thread(RateWriters(url, INSERT, RATE, SECONDS).start)
        await asyncio.to_thread(writers.join)
        deadline = time.monotonic() + 300
        while seq.stats.sequenced - rows0 < RATE * SECONDS and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(backend) - cpu0
        passes = max(1, seq.stats.passes - passes0)
        rows = max(1, seq.stats.sequenced - rows0)
        return cpu * 1e6 / passes, cpu * 1e6 / rows
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _fill(url: str, rows: int, per_tx: int) -> None:
    """Log `rows` changes in transactions of `per_tx` rows, then let a sequencer take them."""
    with psycopg.connect(url, autocommit=True) as conn:
        create_table(conn, "b_seq", "tracked")
        with conn.pipeline() as pipe:
            for start in range(1, rows + 1, per_tx):
                conn.execute(
                    "INSERT INTO b_seq (v, note) "
                    "SELECT g, 'fill' FROM generate_series(%s::int, %s::int) g",
                    (start, min(rows, start + per_tx - 1)),
                )
                pipe.sync()


def _without_seal(text: str) -> str:
    """`sequence_batch` minus its audit-seal CTEs (everything from the first seal CTE up to
    `upd`): what sealing costs. Unchanged when the query has no such CTEs."""
    starts = [i for i in (text.find("), prev AS ("), text.find("), seal AS (")) if i >= 0]
    end = text.find("), upd AS (")
    if not starts or end < 0:
        return text
    return text[: min(starts)] + text[end:]


STATES = [
    ("never analyzed (a new deployment)", "bulk", "forget"),
    ("analyzed after a bulk load (few txids)", "bulk", "analyze"),
    ("analyzed, application-like txids", "small", "analyze"),
]


def run(ctx: Ctx) -> Result:
    res = Result("seqstats", TITLE)
    log_rows = 20_000 if ctx.quick else 100_000
    reps = ctx.reps
    res.setup = (
        f"logs of {log_rows:,} sequenced changes, written in 10 transactions (bulk) or in "
        f"5-row transactions (application-like); writers then insert {RATE:.0f} rows/s for "
        f"{SECONDS:.0f} s; CPU of the sequencer's PostgreSQL backend (/proc)"
    )
    tid = ctx.task("sequencer and statistics", 2 + reps * (len(STATES) + 1))
    got: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in STATES}
    sealed = queries["sequence_batch"]
    unsealed = _without_seal(sealed)
    no_seal: list[tuple[float, float]] = []
    with ctx.target.database("seqbulk") as bulk, ctx.target.database("seqsmall") as small:
        urls = {"bulk": bulk, "small": small}
        ctx.advance(tid, 0, f"sequencer: logging {log_rows:,} changes in 10 transactions")
        _fill(bulk, log_rows, log_rows // 10)
        ctx.advance(tid, 1, f"sequencer: logging {log_rows:,} changes in 5-row transactions")
        _fill(small, log_rows, 5)
        ctx.advance(tid)
        for rep in range(reps):
            for label, db, stats in STATES:
                ctx.advance(tid, 0, f"sequencer: {label} (run {rep + 1})")
                if stats == "forget":
                    _forget_statistics(urls[db])
                else:
                    with psycopg.connect(urls[db], autocommit=True) as conn:
                        conn.execute("ANALYZE pgtide.sync_log")
                got[label].append(asyncio.run(_measure(urls[db])))
                ctx.advance(tid)
            if unsealed != sealed:
                ctx.advance(tid, 0, f"sequencer: without the audit seal (run {rep + 1})")
                queries["sequence_batch"] = unsealed
                try:
                    no_seal.append(asyncio.run(_measure(small)))
                finally:
                    queries["sequence_batch"] = sealed
                # The next sealed pass digests what this one left unsealed: let it happen
                # outside the next measurement.
                with psycopg.connect(small, autocommit=True) as conn:
                    conn.execute("INSERT INTO b_seq (v, note) VALUES (0, 'reseal')")
            ctx.advance(tid)
    ctx.done(tid)
    base_label = STATES[-1][0]
    base = got[base_label]
    for label, _, _ in STATES[:-1]:
        for k, what in ((0, "CPU per pass"), (1, "CPU per row")):
            ours = [x[k] for x in got[label]]
            b = [x[k] for x in base]
            res.rows.append(
                Row(
                    f"{what}, pgtide.sync_log {label}", median(ours), "µs", baseline=median(b),
                    baseline_label="application-like", spread=spread(ours, "{:,.0f}"),
                    baseline_spread=spread(b, "{:,.0f}"),
                )
            )  # fmt: skip
    if no_seal:
        b = [x[1] for x in base]
        ours = [x[1] for x in no_seal]
        res.rows.append(
            Row(
                "CPU per row, application-like, without the audit seal", median(ours), "µs",
                baseline=median(b), baseline_label="with the seal (as shipped)",
                spread=spread(ours, "{:,.0f}"), baseline_spread=spread(b, "{:,.0f}"),
                note="sequence_batch minus its seal CTEs, same log, interleaved",
            )
        )  # fmt: skip
    res.notes.append(
        "Proposal (cdc/sequencer.py, cdc/queries.sql, schema): make the sequencer's plans "
        "independent of pgtide.sync_log's statistics, e.g. ANALYZE pgtide.sync_log "
        "when the leader starts "
        "and finds none, plus `ALTER TABLE pgtide.sync_log ALTER COLUMN txid SET (n_distinct = "
        "-0.2)` so that a bulk load does not turn every pass into full scans."
    )
    return res
