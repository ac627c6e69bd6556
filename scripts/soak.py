"""Soak: a `pgtide serve` under steady writes and many subscribers, checked every minute.

    python scripts/soak.py [--minutes 10] [--rate 1000] [--subscribers 500] [--shards 10]
                           [--writers 8] [--database-url postgresql://...]

- A fresh database (on the server of --database-url, or an embedded PostgreSQL in a
  temporary directory) with one tracked table `soak (id, shard, v, note)`.
- One `pgtide serve` subprocess (auth off, logs at WARNING).
- Subscribers: raw asyncio HTTP/1.1 clients (chunked framing and SSE parsed by hand, so
  that one Python process can follow hundreds of streams), subscriber i following
  `tables=soak&shard=eq.<i % shards>` from `since=now`; a stream the server closes is
  resumed with Last-Event-ID.
- Writers: a separate process with `--writers` connections, paced to `--rate` single-row
  autocommit transactions per second: 70 % INSERT, 30 % UPDATE of a random earlier row.

Every minute it prints, for the changes sequenced up to the cutoff taken the minute
before (so every subscriber had a minute to receive them): the changes each subscriber
should have received, checked against `pgtide.sync_order` joined with `pgtide.sync_log` (lost,
duplicated, out of order: all must be 0), the commit-to-receipt latency percentiles
(receipt time minus the change's `at`, the trigger's clock time inside its one-row
transaction, sampled on every 10th seq), and the server's RSS. After the writers stop,
the rest is drained and checked the same way. Exit code 1 if anything was lost,
duplicated or out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import multiprocessing
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.apps import load_app  # noqa: E402
from cdc import embedded  # noqa: E402
from cdc.migrate import migrate  # noqa: E402

SETUP = """
CREATE TABLE soak (id bigint PRIMARY KEY, shard int NOT NULL, v int NOT NULL, note text);
SELECT pgtide.track_v1('soak');
"""
ID_LINE = re.compile(rb"^id: (\d+)$", re.M)
AT_FIELD = re.compile(rb'"at":"([^"]+)"')
SAMPLE_EVERY = 10  # latency is measured on seqs divisible by this


# Writers (a separate process) -------------------------------------------------


def writer_process(url: str, rate: float, writers: int, shards: int, stop_at: float) -> None:
    """`writers` threads, each paced to rate/writers transactions per second until stop_at."""
    next_id = multiprocessing.Value("q", 0, lock=False)
    lock = threading.Lock()

    def one(wid: int) -> None:
        rng = random.Random(wid)
        interval = writers / rate
        with psycopg.connect(url, autocommit=True) as conn:
            due = time.monotonic()
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    return
                if due > now:
                    time.sleep(due - now)  # pacing to the target rate
                due += interval
                with lock:
                    next_id.value += 1
                    n = next_id.value
                if n < 100 or rng.random() < 0.7:
                    conn.execute(
                        "INSERT INTO soak (id, shard, v, note) VALUES (%s, %s, 0, %s)",
                        (n, n % shards, f"row {n}"),
                    )
                else:
                    target = rng.randint(1, n - 1)
                    conn.execute("UPDATE soak SET v = v + 1 WHERE id = %s", (target,))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# Subscribers -----------------------------------------------------------------


@dataclass
class Sub:
    """One stream: the seqs received since the last check, latency samples, reconnects."""

    index: int
    shard: int
    start: int = -1  # the `synced` cursor of its first connection
    last_id: str | None = None
    seqs: array = field(default_factory=lambda: array("q"))  # type: ignore[type-arg]
    connects: int = 0
    received: int = 0


class Subscribers:
    def __init__(self, port: int, count: int, shards: int) -> None:
        self.port = port
        self.subs = [Sub(i, i % shards) for i in range(count)]
        self.latencies: list[float] = []
        self.synced = 0
        self.all_synced = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def run_one(self, sub: Sub) -> None:
        while True:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, OSError):
                await self._stream(sub)
            await asyncio.sleep(0.2)  # the server closed it (told to reconnect): resume

    async def _stream(self, sub: Sub) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**22)
        sub.connects += 1
        query = f"/events?tables=soak&shard=eq.{sub.shard}"
        head = f"GET {query}{'' if sub.last_id else '&since=now'} HTTP/1.1\r\n"
        head += f"Host: 127.0.0.1:{self.port}\r\nAccept: text/event-stream\r\n"
        if sub.last_id:
            head += f"Last-Event-ID: {sub.last_id}\r\n"
        writer.write((head + "\r\n").encode())
        try:
            status = await reader.readline()
            if b" 200 " not in status:
                raise ConnectionError(status.decode(errors="replace").strip())
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            buf = b""
            while True:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    return
                buf += await reader.readexactly(size)
                await reader.readexactly(2)
                if b"\n\n" in buf:
                    done, _, buf = buf.rpartition(b"\n\n")
                    self._events(sub, done)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _events(self, sub: Sub, data: bytes) -> None:
        now = time.time()
        for block in data.split(b"\n\n"):
            found = ID_LINE.search(block)
            if found is None:
                continue
            sub.last_id = found.group(1).decode()
            if b"event: synced" in block:
                if sub.start < 0:
                    sub.start = int(sub.last_id)
                    self.synced += 1
                    if self.synced == len(self.subs):
                        self.all_synced.set()
                continue
            seq = int(sub.last_id)
            sub.seqs.append(seq)
            sub.received += 1
            if seq % SAMPLE_EVERY == 0:
                at = AT_FIELD.search(block)
                if at is not None:
                    self.latencies.append(
                        now - datetime.fromisoformat(at.group(1).decode()).timestamp()
                    )

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self.run_one(s)) for s in self.subs]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# Checking --------------------------------------------------------------------


@dataclass
class Verdict:
    expected: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    disordered: int = 0


def expected_by_shard(conn: psycopg.Connection[Any], after: int, upto: int) -> dict[int, list[int]]:
    rows = conn.execute(
        """SELECT (l.new_row ->> 'shard')::int, o.seq FROM pgtide.sync_order o
             JOIN pgtide.sync_log l ON l.id = o.log_id
            WHERE o.seq > %s AND o.seq <= %s AND l.table_name = 'soak' ORDER BY o.seq""",
        (after, upto),
    ).fetchall()
    out: dict[int, list[int]] = {}
    for shard, seq in rows:
        out.setdefault(shard, []).append(seq)
    return out


def check(subs: Subscribers, url: str, after: int, upto: int) -> Verdict:
    """Each subscriber's seqs in (after, upto] against the log; they are then forgotten.

    Runs in a thread while the event loop keeps reading (and appending to the arrays):
    only the prefix up to `upto` is taken, with single C-level operations."""
    with psycopg.connect(url, autocommit=True) as conn:
        by_shard = expected_by_shard(conn, after, upto)
    v = Verdict()
    for sub in subs.subs:
        n = bisect.bisect_right(sub.seqs, upto)
        got = sub.seqs[:n].tolist()
        del sub.seqs[:n]
        want = [s for s in by_shard.get(sub.shard, []) if s > sub.start]
        v.expected += len(want)
        v.duplicated += len(got) - len(set(got))
        v.lost += len(set(want) - set(got))
        v.extra += len(set(got) - set(want))
        v.disordered += sum(1 for a, b in itertools.pairwise(got) if b <= a)
    return v


def head_seq(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM pgtide.sync_order").fetchone()
    return int(row[0]) if row else 0


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return "p50 - p90 - p99 - max -"
    q = statistics.quantiles(values, n=100, method="inclusive")
    ms = [q[49] * 1000, q[89] * 1000, q[98] * 1000, max(values) * 1000]
    return "p50 {:.1f} p90 {:.1f} p99 {:.1f} max {:.1f} ms".format(*ms)


# Main ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def soak(args: argparse.Namespace, url: str) -> int:
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PGTIDE_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--no-migrate", "--insecure-no-auth",
         "--port", str(port)], env=env, cwd=ROOT,
    )  # fmt: skip
    conn = psycopg.connect(url, autocommit=True)
    failed = False
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            await asyncio.sleep(0.1)
        proc = psutil.Process(server.pid)
        subs = Subscribers(port, args.subscribers, args.shards)
        subs.start()
        await asyncio.wait_for(subs.all_synced.wait(), 120)
        print(f"{args.subscribers} subscribers connected; server RSS "
              f"{proc.memory_info().rss / 2**20:.0f} MiB; writing {args.rate:.0f}/s for "
              f"{args.minutes} min with {args.writers} writers", flush=True)  # fmt: skip

        stop_at = time.monotonic() + args.minutes * 60
        ctx = multiprocessing.get_context("spawn")
        writers = ctx.Process(
            target=writer_process, args=(url, args.rate, args.writers, args.shards, stop_at)
        )
        writers.start()
        checked = 0  # every seq up to here has been checked
        cutoff = head_seq(conn)  # checked at the next report: subscribers had a minute
        totals = Verdict()
        print("minute  writes/s  events/s  checked  lost  dup  extra  disorder  "
              "commit-to-receipt latency                     RSS MiB  reconnects",
              flush=True)  # fmt: skip
        last = (time.monotonic(), 0)
        minute = 0

        async def report(label: str, upto: int, new_cutoff: int) -> None:
            nonlocal checked, cutoff, last
            verdict = await asyncio.to_thread(check, subs, url, checked, upto)
            for k in ("expected", "lost", "duplicated", "extra", "disordered"):
                setattr(totals, k, getattr(totals, k) + getattr(verdict, k))
            now, received = time.monotonic(), sum(s.received for s in subs.subs)
            elapsed = max(now - last[0], 1e-9)
            lat, subs.latencies = subs.latencies, []
            reconnects = sum(s.connects for s in subs.subs) - len(subs.subs)
            print(f"{label:>6}  {(new_cutoff - cutoff) / elapsed:>8.0f}  "
                  f"{(received - last[1]) / elapsed:>8.0f}  {verdict.expected:>7}  "
                  f"{verdict.lost:>4}  {verdict.duplicated:>3}  {verdict.extra:>5}  "
                  f"{verdict.disordered:>8}  {percentiles(lat):<44} "
                  f"{proc.memory_info().rss / 2**20:>7.0f}  {reconnects:>10}",
                  flush=True)  # fmt: skip
            checked, cutoff, last = upto, new_cutoff, (now, received)

        while time.monotonic() < stop_at:
            minute += 1
            await asyncio.sleep(max(0.0, min(time.monotonic() + 60, stop_at) - time.monotonic()))
            await report(str(minute), cutoff, head_seq(conn))
        await asyncio.to_thread(writers.join)  # the loop keeps reading meanwhile
        # Drain: every subscriber reaches the last change of its shard (or a minute passes).
        final = dict(conn.execute(
            "SELECT (l.new_row ->> 'shard')::int, max(o.seq) FROM pgtide.sync_order o "
            "JOIN pgtide.sync_log l ON l.id = o.log_id WHERE l.table_name = 'soak' GROUP BY 1"
        ).fetchall())  # fmt: skip
        drained_by = time.monotonic() + 60
        while time.monotonic() < drained_by and any(
            int(s.last_id or 0) < final.get(s.shard, 0) for s in subs.subs
        ):
            await asyncio.sleep(0.2)
        head = head_seq(conn)
        await report("drain", head, head)
        log_rows = conn.execute("SELECT count(*) FROM pgtide.sync_log").fetchone()
        print(f"total: {log_rows[0] if log_rows else 0} changes written and sequenced; "
              f"{totals.expected} deliveries checked against pgtide.sync_log: lost {totals.lost}, "
              f"duplicated {totals.duplicated}, unexpected {totals.extra}, "
              f"out of order {totals.disordered}",
              flush=True)  # fmt: skip
        failed = bool(totals.lost or totals.duplicated or totals.extra or totals.disordered)
        await subs.stop()
    finally:
        conn.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=1000, help="writes per second")
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--shards", type=int, default=10, help="subscriber i follows shard i %% N")
    parser.add_argument("--writers", type=int, default=8, help="writer connections")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SOAK_DATABASE_URL"),
        help="a server to create the soak database on [default: embedded]",
    )
    args = parser.parse_args()

    if args.database_url:
        server_url = args.database_url
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="pgtide-soak-"))
        server_url = embedded.start(data_dir, "postgres", cleanup="delete")
    name = f"pgtide_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = psycopg.conninfo.conninfo_to_dict(server_url)
    params["dbname"] = name
    url = psycopg.conninfo.make_conninfo("", **params)
    try:
        migrate(url, [load_app("dynapharm").install()])  # the demo tables too
        with psycopg.connect(url, autocommit=True) as c:
            c.execute(SETUP.encode())
        code = asyncio.run(soak(args, url))
    finally:
        with psycopg.connect(server_url, autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))  # fmt: skip
    sys.exit(code)


if __name__ == "__main__":
    main()
