"""5. Idle connections.

10,000 SSE connections are opened against one `pgtide serve` process (from four
client processes, the soft RLIMIT_NOFILE raised to the hard limit on both
sides) and held open; the server's resident memory is read from
/proc/<pid>/status before, once every stream is live, and after holding them
(in thorough mode past the 15 s heartbeat, which every stream must receive).
Baseline: bench/floor_app.py, the smallest Starlette + sse-starlette stream,
under the same uvicorn and the same clients.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import psycopg

from bench.common import Ctx, Result, Row, Server, at_most, median, spread
from bench.load import create_table
from bench.sse import COUNT, Subscribers

TITLE = "Idle connections"
TARGET_MIB = 512
CONNS = 10_000


def hold(server: Server, conns: int, seconds: float) -> dict[str, Any]:
    rss0 = server.rss_mib()
    t0 = time.monotonic()
    with Subscribers(
        server.host, server.port, ["/events?tables=b_idle"] * conns, 4, COUNT,
        concurrency=100, connect_timeout=120,
    ) as sse:  # fmt: skip
        opened = time.monotonic() - t0
        if sse.ready < conns:
            raise RuntimeError(f"only {sse.ready} of {conns} streams opened: {sse.failures}")
        rss_live = server.rss_mib()
        time.sleep(seconds)
        st = sse.status()
        rss_end = server.rss_mib()
        sse.stop()
    return {
        "rss0": rss0, "rss_live": rss_live, "rss_end": rss_end, "open": st["open"],
        "pings": st["pings"], "open_s": opened,
    }  # fmt: skip


def run(ctx: Ctx) -> Result:
    res = Result("idle", TITLE)
    held = 1.0 if ctx.quick else 20.0
    # Opening 10,000 streams takes a minute or more here: --quick opens 1,000 and projects.
    conns = 1000 if ctx.quick else CONNS
    reps = 1 if ctx.quick else min(ctx.reps, 2)
    res.setup = (
        f"{conns:,} SSE connections from 4 client processes, held {held:.0f} s; server RSS from "
        "/proc; baseline: minimal Starlette + sse-starlette stream (bench/floor_app.py) under "
        "the same uvicorn"
    )
    tid = ctx.task("idle connections", reps * 2)
    ours: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    with ctx.target.database("idle") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            create_table(conn, "b_idle", "tracked")
        for rep in range(reps):
            ctx.advance(tid, 0, f"idle: {conns:,} streams on pgtide (run {rep + 1})")
            with Server(url, ctx.logdir, "idle") as server:
                ours.append(hold(server, conns, held))
            ctx.advance(tid, 1, f"idle: {conns:,} streams on the floor app (run {rep + 1})")
            floor = Server(url, ctx.logdir, "idle-floor")
            floor.cmd = [
                sys.executable, "-m", "uvicorn", "bench.floor_app:app",
                "--host", floor.host, "--port", str(floor.port), "--log-level", "warning",
            ]  # fmt: skip
            with floor:
                base.append(hold(floor, conns, held))
            ctx.advance(tid)
    ctx.done(tid)
    scale = CONNS / conns

    def at_full(r: dict[str, Any]) -> float:
        return float(r["rss0"] + (r["rss_end"] - r["rss0"]) * scale)

    end = [at_full(r) for r in ours]
    b_end = [at_full(r) for r in base]
    per_conn = median([(r["rss_end"] - r["rss0"]) * 1024 / conns for r in ours])
    b_per_conn = median([(r["rss_end"] - r["rss0"]) * 1024 / conns for r in base])
    note = (
        f"RSS before {median([r['rss0'] for r in ours]):.0f} MiB, once live "
        f"{median([r['rss_live'] for r in ours]):.0f} MiB; opened in "
        f"{median([r['open_s'] for r in ours]):.1f} s (floor app "
        f"{median([r['open_s'] for r in base]):.1f} s); {min(r['open'] for r in ours):,} "
        "still open"
    )
    if scale != 1:
        measured = median([r["rss_end"] for r in ours])
        note = f"projected from {conns:,} streams ({measured:.0f} MiB); " + note
    if not ctx.quick:
        note += f"; heartbeats received: {min(r['pings'] for r in ours):,}"
    res.rows.append(
        Row(
            f"server RSS with {CONNS:,} open streams" + (" (projected)" if scale != 1 else ""),
            median(end), "MiB", baseline=median(b_end),
            baseline_label="minimal sse-starlette app", target=f"< {TARGET_MIB} MiB",
            passed=at_most(median(end), TARGET_MIB - 1e-9), spread=spread(end, "{:.0f}"),
            baseline_spread=spread(b_end, "{:.0f}"), note=note,
        )
    )  # fmt: skip
    res.rows.append(
        Row(
            "memory per open stream", per_conn, "KiB", baseline=b_per_conn,
            baseline_label="minimal sse-starlette app",
        )
    )  # fmt: skip
    return res
