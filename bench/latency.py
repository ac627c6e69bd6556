"""2. Commit-to-client latency.

Writer processes run single-row INSERT transactions on a fixed schedule and take
the monotonic time when COMMIT returns; SSE subscribers (raw asyncio sockets in
a few processes) take the time each event's bytes arrive. CLOCK_MONOTONIC is
one clock for all processes of the machine, so latency = arrival - commit.
Each event's seq is mapped back to the row id it carries through pgtide.sync_order.

Baseline: the same writes into a table whose trigger NOTIFYs every
transaction, received by one bare psycopg LISTEN client (the floor a direct
NOTIFY gives).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from bench.common import Ctx, Result, Row, Server, at_most, median, pct, spread
from bench.load import Listeners, RateWriters, create_table
from bench.sse import SEQS, Subscribers

TITLE = "Commit-to-client latency"
TRACKED_SQL = "INSERT INTO b_lat (v, note) VALUES (%s, 'latency') RETURNING id"
NAIVE_SQL = "INSERT INTO b_naive (v, note) VALUES (%s, 'latency') RETURNING id"
PROCS_OVERRIDE = 0  # experiments only
LONE_P99_MS = 5.0
LOADED_P50_MS, LOADED_P99_MS = 5.0, 15.0


@dataclass
class Lat:
    """Latencies (ms) of one cell, and what was delivered."""

    values: list[float]
    expected: int  # writes x subscribers that kept their latency record
    delivered: int
    rate: float
    subs: int = 1
    gaps: int = 0
    dups: int = 0
    dropped: int = 0  # subscribers whose stream ended early (too slow, told to reconnect)
    cpu: float = float("nan")  # server CPU, fraction of one core

    def p(self, q: float) -> float:
        return pct(self.values, q)


def seq_to_id(url: str, table: str, after: int) -> dict[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT o.seq, (l.pk->>'id')::bigint FROM pgtide.sync_order o "
            "JOIN pgtide.sync_log l ON l.id = o.log_id WHERE o.seq > %s AND l.table_name = %s",
            (after, table),
        )
        return {int(s): int(i) for s, i in cur.fetchall()}


def sse_cell(
    ctx: Ctx, server: Server, url: str, rate: float, seconds: float, subs: int, record: int
) -> Lat:
    """`subs` SSE subscribers on b_lat while writers insert at `rate`/s for `seconds`."""
    procs = PROCS_OVERRIDE or (1 if subs == 1 else (2 if subs <= 200 else 4))
    per_proc = max(1, -(-record // procs))
    paths = ["/events?tables=b_lat"] * subs
    wprocs = 1 if rate <= 1500 else 3
    head = server.head()
    with Subscribers(server.host, server.port, paths, procs, SEQS, per_proc) as sse:
        if sse.ready < subs:
            raise RuntimeError(f"only {sse.ready} of {subs} subscribers connected: {sse.failures}")
        cpu0 = server.cpu_s()
        writers = RateWriters(url, TRACKED_SQL, rate, seconds, wprocs).start()
        commits, achieved = writers.join()
        cpu = (server.cpu_s() - cpu0) / max(seconds, 1e-9)
        sse.wait_each(len(commits), timeout=30, idle=3)
        out = sse.stop()
    ids = seq_to_id(url, "b_lat", head)
    values: list[float] = []
    for firsts, lasts, times in out["records"]:
        for first, last, t in zip(firsts, lasts, times, strict=True):
            for s in range(first, last + 1):
                c = commits.get(ids.get(s, -1))
                if c is not None:
                    values.append((t - c) * 1000)
    recorded = len(out["records"])
    return Lat(
        values, len(commits) * recorded, len(values), achieved, subs,
        gaps=sum(s["gaps"] for s in out["subs"]), dups=sum(s["dups"] for s in out["subs"]),
        dropped=sum(1 for s in out["subs"] if s["ended"] or s["lost"]), cpu=cpu,
    )  # fmt: skip


def listen_cell(url: str, rate: float, seconds: float) -> Lat:
    """The baseline: one LISTEN client on the NOTIFY-per-transaction table."""
    listeners = Listeners(url, 1).start()
    writers = RateWriters(url, NAIVE_SQL, rate, seconds, 1 if rate <= 1500 else 3).start()
    commits, achieved = writers.join()
    time.sleep(0.5)
    got = listeners.stop()
    values = [
        (t - commits[i]) * 1000
        for ids, times in got
        for i, t in zip(ids, times, strict=True)
        if i in commits
    ]
    return Lat(values, len(commits), len(values), achieved)


def _fmt_note(lat: Lat) -> str:
    parts = [f"max {max(lat.values, default=float('nan')):.1f} ms", f"{lat.rate:,.0f} commits/s"]
    if lat.delivered < lat.expected:
        parts.append(f"delivered {lat.delivered:,}/{lat.expected:,}")
    if lat.gaps or lat.dups:
        parts.append(f"gaps {lat.gaps}, dups {lat.dups}")
    if lat.dropped:
        parts.append(f"{lat.dropped} streams cut")
    if lat.cpu == lat.cpu:
        parts.append(f"server CPU {lat.cpu:.0%}")
    return ", ".join(parts)


def _merge(cells: Iterable[Lat]) -> list[float]:
    return [v for c in cells for v in c.values]


def run(ctx: Ctx) -> Result:
    res = Result("latency", TITLE)
    quick = ctx.quick
    lone_n = 50 if quick else 200
    lone_gap = 0.05
    seconds = 2.0 if quick else 10.0
    rates = [100, 1000] if quick else [100, 1000, 5000]
    subs_list = [1, 100] if quick else [1, 100, 1000]
    reps = ctx.reps
    res.setup = (
        f"lone write: {lone_n} single-row INSERTs {lone_gap * 1000:.0f} ms apart, one "
        f"subscriber; loaded: {seconds:.0f} s of single-row INSERT transactions at a fixed rate "
        "(open loop) from writer processes, subscribers in 1-4 processes (asyncio raw "
        "sockets); latency = arrival at each subscriber - COMMIT returned (CLOCK_MONOTONIC); "
        "baseline: the same writes on a NOTIFY-per-transaction table, one psycopg LISTEN client"
    )
    cells = [(r, s) for r in rates for s in subs_list]
    total = reps * 2 + len(cells) + len(rates) + (reps - 1) * 2
    tid = ctx.task("latency", total)
    with ctx.target.database("latency") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            create_table(conn, "b_lat", "tracked")
            create_table(conn, "b_naive", "naive")
        with Server(url, ctx.logdir, "latency") as server:
            lone: list[Lat] = []
            lone_base: list[Lat] = []
            for rep in range(reps):
                ctx.advance(tid, 0, f"latency: lone write (run {rep + 1})")
                lone.append(sse_cell(ctx, server, url, 1 / lone_gap, lone_n * lone_gap, 1, 1))
                ctx.advance(tid)
                lone_base.append(listen_cell(url, 1 / lone_gap, lone_n * lone_gap))
                ctx.advance(tid)
            ours_v, base_v = _merge(lone), _merge(lone_base)
            res.rows += _rows(
                "lone write", lone, lone_base, ours_v, base_v,
                targets={99: LONE_P99_MS},
            )  # fmt: skip
            base_by_rate: dict[float, Lat] = {}
            for rate in rates:
                ctx.advance(tid, 0, f"latency: baseline {rate}/s")
                base_by_rate[rate] = listen_cell(url, rate, seconds)
                ctx.advance(tid)
            for rate, subs in cells:
                key = rate == 1000 and subs == 100
                runs = reps if key else 1
                got: list[Lat] = []
                for rep in range(runs):
                    ctx.advance(tid, 0, f"latency: {rate}/s x {subs} subscribers (run {rep + 1})")
                    record = min(subs, 100)
                    got.append(sse_cell(ctx, server, url, rate, seconds, subs, record))
                    ctx.advance(tid)
                base = base_by_rate[rate]
                targets = {50: LOADED_P50_MS, 99: LOADED_P99_MS} if key else {}
                res.rows += _rows(
                    f"{rate:,}/s x {subs:,} subs", got, [base], _merge(got), base.values, targets
                )
    ctx.done(tid)
    res.notes.append(
        "Percentiles pool every (event, subscriber) pair of the runs; 'spread' is the range "
        "of the per-run percentile. With 1,000 subscribers, latencies are kept for 100 of "
        "them (all are counted and checked for gaps)."
    )
    return res


def _rows(
    label: str,
    ours: Sequence[Lat],
    base: Sequence[Lat],
    ours_v: list[float],
    base_v: list[float],
    targets: dict[int, float],
) -> list[Row]:
    rows = []
    for q in (50, 99):
        limit = targets.get(q)
        ours_q = pct(ours_v, q)
        rows.append(
            Row(
                f"{label}: p{q}", ours_q, "ms", baseline=pct(base_v, q),
                baseline_label="LISTEN", target=f"≤ {limit:g} ms" if limit else "",
                passed=at_most(ours_q, limit) if limit else None,
                spread=spread([c.p(q) for c in ours], "{:.2f}"),
                baseline_spread=spread([c.p(q) for c in base], "{:.2f}"),
                note=_fmt_note(ours[0]) if q == 99 else "",
            )
        )  # fmt: skip
    _ = median, Any
    return rows
