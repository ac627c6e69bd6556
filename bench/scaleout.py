"""10. Scale-out through NATS JetStream: relay and gateways (docs/scale-out.md).

A nats-server with JetStream (a temporary store, a free port), one `pgtide
relay`, and 1, 2 then 3 gateway processes (`pgtide serve` with
PGTIDE_BROKER_URL) sharing the same total number of SSE subscribers. Writer
processes insert at a fixed rate (1,000 commits/s thorough) and take the
monotonic time at COMMIT; subscribers take the time each event arrives.

- deliveries per gateway CPU-second: events delivered / CPU seconds of the gateways
- database work caused by live streaming: the gateways' backends (their
  connections carry application_name `bench-gw`) whose last statement changed
  while streaming, from pg_stat_activity (goal: none, whatever the gateways)
- p99 commit -> client through sequencer, relay, NATS and a gateway (goal <= 15 ms)
- the relay's publishing rate from a sequenced backlog (1,000,000 changes
  thorough; goal >= 20,000 changes/s): the relay is stopped, a sequencer
  sequences the backlog, the relay starts, the stream's last sequence is polled.

PGTIDE_BENCH_SCALEOUT=latency runs only the 1-gateway cell (the latency row),
=backlog only the backlog; unset, everything. PGTIDE_BENCH_SCALEOUT_SUBS sets the
number of SSE subscribers (default 600 thorough, 30 quick).

Two cores cannot show throughput growing with gateways; the per-gateway cost
and the flat database load are what this machine can show. Needs Debian's
nats-server (skipped without it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    REPO,
    Ctx,
    Result,
    Row,
    Server,
    at_least,
    at_most,
    free_port,
    pct,
    wait_sequenced,
    wait_until,
)
from bench.latency import seq_to_id
from bench.load import RateWriters, create_table
from bench.sse import SEQS, Subscribers

TITLE = "Scale-out: relay and gateways over NATS JetStream"
SQL = "INSERT INTO b_so (v, note) VALUES (%s, 'scaleout') RETURNING id"
P99_MS, RELAY_RATE = 15.0, 20_000.0
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class Nats:
    """A throwaway nats-server with JetStream."""

    def __init__(self, logdir: Path) -> None:
        self.store = Path(tempfile.mkdtemp(prefix="pgtide-bench-js-"))
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        log = open(logdir / "nats-server.log", "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            [NATS_SERVER, "-js", "-sd", str(self.store), "-p", str(self.port), "-a", "127.0.0.1"],
            stdout=log, stderr=log,
        )  # fmt: skip
        log.close()
        if not wait_until(lambda: self.last_seq() is not None or self._answers(), 20):
            raise RuntimeError("nats-server did not start")

    def _answers(self) -> bool:
        async def check() -> bool:
            import nats

            try:
                nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=1)
            except Exception:
                return False
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        return asyncio.run(check())

    def last_seq(self, stream: str = "PGTIDE") -> int | None:
        """The stream's last pgtide seq (None: no stream yet)."""

        async def read() -> int | None:
            import nats

            from cdc.broker import offset_of

            try:
                nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=1)
            except Exception:
                return None
            try:
                info = await nc.jetstream().stream_info(stream)
                offset = offset_of(info.config.description)
                return None if offset is None else int(info.state.last_seq) + offset
            except Exception:
                return None
            finally:
                await nc.close()

        return asyncio.run(read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.store, ignore_errors=True)


def spawn(url: str, nats: Nats, logdir: Path, what: str) -> subprocess.Popen[bytes]:
    """`pgtide relay` or `pgtide sequencer` against the database."""
    env = {**os.environ, "DATABASE_URL": url, "PGTIDE_BROKER_URL": nats.url,
           "PGTIDE_LOG_LEVEL": "WARNING"}  # fmt: skip
    log = open(logdir / f"scaleout-{what}.log", "ab")  # noqa: SIM115 (owned by the child)
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", what], env=env, cwd=REPO,
                            stdout=log, stderr=log)  # fmt: skip
    log.close()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def gateway_backends(url: str) -> set[tuple[int, Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, query_start FROM pg_stat_activity WHERE application_name = 'bench-gw'"
        ).fetchall()
    return {(r[0], r[1]) for r in rows}


def cell(
    ctx: Ctx, url: str, nats: Nats, gateways: int, subs: int, rate: float, seconds: float
) -> dict[str, Any]:
    env = {"PGTIDE_BROKER_URL": nats.url}
    servers = [Server(f"{url} application_name=bench-gw", ctx.logdir, f"scaleout-gw{gateways}-{i}",
                      env=env) for i in range(gateways)]  # fmt: skip
    for s in servers:
        s.start()
    try:
        per = [subs // gateways + (1 if i < subs % gateways else 0) for i in range(gateways)]
        head = max(s.head() for s in servers)
        clients = [
            Subscribers(s.host, s.port, ["/events?tables=b_so"] * n, 1, SEQS, 1).start()
            for s, n in zip(servers, per, strict=True)
        ]
        try:
            before = gateway_backends(url)
            cpu0 = sum(s.cpu_s() for s in servers)
            commits, achieved = RateWriters(url, SQL, rate, seconds, 1).start().join()
            for c in clients:
                c.wait_each(len(commits), timeout=30, idle=3)
            cpu = sum(s.cpu_s() for s in servers) - cpu0
            busy = {pid for pid, t in gateway_backends(url) - before}
        finally:
            outs = [c.stop() for c in clients]
    finally:
        for s in servers:
            s.stop()
    ids = seq_to_id(url, "b_so", head)
    delivered = sum(s["count"] for out in outs for s in out["subs"])
    lat = [
        (t - commits[ids[q]]) * 1000
        for out in outs
        for firsts, lasts, times in out["records"]
        for first, last, t in zip(firsts, lasts, times, strict=True)
        for q in range(first, last + 1)
        if ids.get(q, -1) in commits
    ]
    return {"delivered": delivered, "cpu": cpu, "busy": len(busy), "p99": pct(lat, 99),
            "p50": pct(lat, 50), "achieved": achieved, "n": len(lat)}  # fmt: skip


def backlog_rate(ctx: Ctx, url: str, nats: Nats, relay: subprocess.Popen[bytes], n: int) -> float:
    stop(relay)
    with psycopg.connect(url, autocommit=True) as conn:
        step = 10_000
        for first in range(0, n, step):
            conn.execute(
                "INSERT INTO b_so (v, note) "
                "SELECT g, 'backlog' FROM generate_series(%s::int, %s::int) g",
                (first, min(n, first + step) - 1),
            )
    seq = spawn(url, nats, ctx.logdir, "sequencer")
    try:
        if not wait_sequenced(url, timeout=600):
            raise RuntimeError("the backlog was not sequenced in time")
    finally:
        stop(seq)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT last_seq FROM pgtide.sync_sequencer").fetchone()
        head = int(row[0]) if row else 0
    start = nats.last_seq() or 0
    relay = spawn(url, nats, ctx.logdir, "relay")
    try:
        wait_until(lambda: (nats.last_seq() or 0) > start, 60, step=0.01)
        t0, s0 = time.monotonic(), nats.last_seq() or 0
        if not wait_until(lambda: (nats.last_seq() or 0) >= head, 1200, step=0.05):
            raise RuntimeError("the relay did not publish the backlog in time")
        return (head - s0) / max(time.monotonic() - t0, 1e-9)
    finally:
        stop(relay)


def run(ctx: Ctx) -> Result:
    res = Result("scaleout", TITLE)
    if not os.access(NATS_SERVER, os.X_OK):
        res.skipped = "no nats-server binary (apt-get install nats-server)"
        return res
    quick = ctx.quick
    only = os.environ.get("PGTIDE_BENCH_SCALEOUT", "")
    if only not in ("", "latency", "backlog"):
        raise ValueError(f"PGTIDE_BENCH_SCALEOUT={only!r}: latency, backlog or unset")
    gateway_counts = () if only == "backlog" else (1,) if only == "latency" else (1, 2, 3)
    subs, rate, seconds = (30, 200.0, 2.0) if quick else (600, 1000.0, 10.0)
    subs = int(os.environ.get("PGTIDE_BENCH_SCALEOUT_SUBS", subs))
    backlog = 20_000 if quick else 1_000_000
    res.setup = (
        f"1 relay, 1/2/3 gateways sharing {subs} SSE subscribers, {rate:.0f} commits/s for "
        f"{seconds:.0f} s; backlog of {backlog:,} changes"
    )
    nats = Nats(ctx.logdir)
    tid = ctx.task("scale-out", 4)
    try:
        with ctx.target.database("scaleout") as url:
            with psycopg.connect(url, autocommit=True) as conn:
                create_table(conn, "b_so", "tracked")
            relay = spawn(url, nats, ctx.logdir, "relay")
            try:
                if not wait_until(lambda: nats.last_seq() is not None, 60):
                    raise RuntimeError("the relay did not create the stream")
                cells = {}
                for g in gateway_counts:
                    ctx.advance(tid, 0, f"scale-out: {g} gateway(s)")
                    cells[g] = cell(ctx, url, nats, g, subs, rate, seconds)
                    ctx.advance(tid)
                rate_pub = None
                if only != "latency":
                    ctx.advance(tid, 0, f"scale-out: relay backlog of {backlog:,}")
                    rate_pub = backlog_rate(ctx, url, nats, relay, backlog)
                    ctx.advance(tid)
            finally:
                if relay.poll() is None:
                    stop(relay)
    finally:
        nats.stop()
        ctx.done(tid)
    for g, c in cells.items():
        res.rows.append(Row(
            f"deliveries per gateway CPU-second, {g} gateway(s)", c["delivered"] / max(c["cpu"],
            1e-9), "events/CPU-s", note=f"{c['delivered']:,} events, {c['cpu']:.2f} CPU-s",
        ))  # fmt: skip
        res.rows.append(Row(
            f"gateway connections that ran a statement while streaming, {g} gateway(s)",
            c["busy"], "connections", target="0", passed=at_most(c["busy"], 0),
        ))  # fmt: skip
    if 1 in cells:
        one = cells[1]
        res.rows.append(Row(
            f"p99 commit -> client through the relay at {rate:.0f} commits/s (1 gateway)",
            one["p99"], "ms", target=f"<= {P99_MS:.0f} ms", passed=at_most(one["p99"], P99_MS),
            note=f"p50 {one['p50']:.1f} ms, {one['n']:,} samples, "
            f"{one['achieved']:.0f} commits/s",
        ))  # fmt: skip
    if rate_pub is not None:
        res.rows.append(Row(
            f"relay publishing rate from a sequenced backlog of {backlog:,}", rate_pub,
            "changes/s", target=f">= {RELAY_RATE:,.0f}/s", passed=at_least(rate_pub, RELAY_RATE),
        ))  # fmt: skip
    return res
