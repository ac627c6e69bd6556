"""Load generators, each in a process of its own: open-loop writers at a fixed rate,
and the baseline's bare psycopg LISTEN client.

A writer runs single-row transactions in autocommit on a schedule
(`start + i / rate`, catching up without sleeping when late, so a slow server
shows as latency rather than as a lower offered rate) and takes the monotonic
time right after COMMIT returns, keyed by the id the INSERT returned.
"""

from __future__ import annotations

import contextlib
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from bench.common import mp_context

# Every benchmark table has this shape; `grp` is what per-subscriber filters select on.
TABLE_DDL = """
CREATE TABLE {name} (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    grp  integer NOT NULL DEFAULT 0,
    v    integer NOT NULL DEFAULT 0,
    note text
)
"""

# The naive design: every transaction NOTIFYs the row it changed.
NAIVE_TRIGGER = """
CREATE OR REPLACE FUNCTION bench_naive_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_naive', json_build_object(
        'table', TG_TABLE_NAME, 'op', TG_OP, 'row', row_to_json(NEW))::text);
    RETURN NULL;
END $$;
CREATE TRIGGER bench_naive AFTER INSERT OR UPDATE ON {name}
    FOR EACH ROW EXECUTE FUNCTION bench_naive_notify();
"""


def create_table(conn: psycopg.Connection[Any], name: str, kind: str, rows: int = 0) -> None:
    """`kind`: plain (untracked), tracked (pgtide capture) or naive (NOTIFY trigger)."""
    conn.execute(TABLE_DDL.format(name=name).encode())
    if rows:
        conn.execute(
            f"INSERT INTO {name} (grp, v, note) "
            "SELECT g %% 1000, 0, 'seed' FROM generate_series(1, %s) g".encode(),
            (rows,),
        )
    if kind == "tracked":
        conn.execute("SELECT pgtide.track_v1(%s::regclass)", (name,))
    elif kind == "naive":
        conn.execute(NAIVE_TRIGGER.format(name=name).encode())
    elif kind != "plain":
        raise ValueError(kind)


def _writer_main(
    pipe: Connection, url: str, statements: Sequence[str], rate: float, duration: float,
    offset: float, conns: int,
) -> None:  # fmt: skip
    """`conns` connections (threads) share this process's schedule, slot i on connection i % conns:
    a commit waits for a WAL flush, so one connection alone cannot reach a high rate."""
    ids: list[array[int]] = [array("q") for _ in range(conns)]
    times: list[array[float]] = [array("d") for _ in range(conns)]
    connections = [psycopg.connect(url, autocommit=True) for _ in range(conns)]
    pipe.send("ready")
    start_at = float(pipe.recv())
    end = start_at + duration

    def work(j: int) -> None:
        cur = connections[j].cursor()
        i = j
        while True:
            due = start_at + offset + i / rate
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            cur.execute(statements[i % len(statements)], (i,), prepare=True)
            row = cur.fetchone()
            t = time.monotonic()
            ids[j].append(int(row[0]) if row else -1)
            times[j].append(t)
            i += conns

    threads = [threading.Thread(target=work, args=(j,)) for j in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for c in connections:
        c.close()
    all_ids, all_times = array("q"), array("d")
    for a, b in zip(ids, times, strict=True):
        all_ids.extend(a)
        all_times.extend(b)
    pipe.send((all_ids, all_times))


@dataclass
class RateWriters:
    """`procs` writer processes sharing `rate` transactions/s for `duration` seconds.

    `statement` takes one parameter (the write's number) and returns a key (the row id,
    or the txid); a list of statements is used in turn.
    """

    url: str
    statement: str | Sequence[str]
    rate: float
    duration: float
    procs: int = 1
    conns: int = 0  # connections per process (0: about one per 125 commits/s)
    start_delay: float = 0.2
    _pipes: list[Connection] = field(default_factory=list)
    _procs: list[Any] = field(default_factory=list)
    start_at: float = 0.0

    def start(self) -> RateWriters:
        ctx = mp_context()
        conns = self.conns or max(1, min(10, round(self.rate / self.procs / 125)))
        stmts = [self.statement] if isinstance(self.statement, str) else list(self.statement)
        for k in range(self.procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_writer_main,
                args=(child, self.url, stmts, self.rate / self.procs,
                      self.duration, k / self.rate, conns),
                daemon=True,
            )  # fmt: skip
            p.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(p)
        # Spawned processes take a moment to import and connect: start them together.
        for pipe in self._pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("writer did not start")
        self.start_at = time.monotonic() + self.start_delay
        for pipe in self._pipes:
            pipe.send(self.start_at)
        return self

    def join(self) -> tuple[dict[int, float], float]:
        """{key: commit time} and the achieved rate."""
        commits: dict[int, float] = {}
        last = self.start_at
        for pipe in self._pipes:
            if not pipe.poll(self.duration + 120):
                raise RuntimeError("writer did not finish")
            ids, times = pipe.recv()
            commits.update(zip(ids, times, strict=True))
            commits.pop(-1, None)  # writes that returned no row
            if times:
                last = max(last, times[-1])
        for p in self._procs:
            p.join(10)
        elapsed = max(last - self.start_at, 1e-9)
        return commits, len(commits) / elapsed


def _http_writer_main(
    pipe: Connection, host: str, port: int, path: str, body: str, rate: float,
    duration: float, conns: int,
) -> None:  # fmt: skip
    """POST `body` (with `{i}` replaced by the write's number) on a schedule; keyed by txid."""
    import http.client
    import json

    keys: list[array[int]] = [array("q") for _ in range(conns)]
    times: list[array[float]] = [array("d") for _ in range(conns)]
    errors = [0] * conns
    pipe.send("ready")
    start_at = float(pipe.recv())
    end = start_at + duration

    def work(j: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Content-Type": "application/json", "X-Pgtide-Actor": "bench"}
        i = j
        while True:
            due = start_at + i / rate
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            conn.request("POST", path, body.replace("{i}", str(i)), headers)
            r = conn.getresponse()
            data = r.read()
            t = time.monotonic()
            if r.status in (200, 201):
                keys[j].append(int(json.loads(data)["txid"]))
                times[j].append(t)
            else:
                errors[j] += 1
            i += conns
        conn.close()

    threads = [threading.Thread(target=work, args=(j,)) for j in range(conns)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    all_keys, all_times = array("q"), array("d")
    for a, b in zip(keys, times, strict=True):
        all_keys.extend(a)
        all_times.extend(b)
    pipe.send((all_keys, all_times, sum(errors)))


@dataclass
class HttpRateWriters:
    """One process POSTing to the write API at `rate`/s; {txid: response time}."""

    host: str
    port: int
    path: str
    body: str
    rate: float
    duration: float
    conns: int = 4
    errors: int = 0
    _pipe: Connection | None = None
    _proc: Any = None

    def start(self, start_at: float | None = None) -> HttpRateWriters:
        ctx = mp_context()
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_http_writer_main,
            args=(child, self.host, self.port, self.path, self.body, self.rate,
                  self.duration, self.conns),
            daemon=True,
        )  # fmt: skip
        self._proc.start()
        child.close()
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("HTTP writer did not start")
        parent.send(start_at if start_at is not None else time.monotonic() + 0.2)
        self._pipe = parent
        return self

    def join(self) -> dict[int, float]:
        assert self._pipe is not None
        if not self._pipe.poll(self.duration + 120):
            raise RuntimeError("HTTP writer did not finish")
        keys, times, self.errors = self._pipe.recv()
        self._proc.join(10)
        return dict(zip(keys, times, strict=True))


# --------------------------------------------------------------------------- LISTEN baseline


def _listen_main(pipe: Connection, url: str, channel: str) -> None:
    import json

    ids: array[int] = array("q")
    times: array[float] = array("d")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {channel}")
        pipe.send("ready")
        while not pipe.poll():
            for n in conn.notifies(timeout=0.1):
                t = time.monotonic()
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    ids.append(int(json.loads(n.payload)["row"]["id"]))
                    times.append(t)
    pipe.recv()
    pipe.send((ids, times))


@dataclass
class Listeners:
    """`n` bare psycopg LISTEN clients, each in its own process."""

    url: str
    n: int = 1
    channel: str = "bench_naive"
    _pipes: list[Connection] = field(default_factory=list)
    _procs: list[Any] = field(default_factory=list)

    def start(self) -> Listeners:
        ctx = mp_context()
        for _ in range(self.n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_listen_main, args=(child, self.url, self.channel), daemon=True)
            p.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(p)
        for pipe in self._pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("listener did not start")
        return self

    def stop(self) -> list[tuple[Sequence[int], Sequence[float]]]:
        for pipe in self._pipes:
            pipe.send("stop")
        out = []
        for pipe in self._pipes:
            if pipe.poll(30):
                out.append(pipe.recv())
        for p in self._procs:
            p.join(10)
        self._pipes.clear()
        self._procs.clear()
        return out
