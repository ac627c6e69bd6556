"""Many SSE subscribers in a few processes: raw asyncio protocols, no HTTP library.

Each subscriber sends `GET <path> HTTP/1.1`, decodes the chunked body and scans
the event stream for change events (`data: {"cursor":"<seq>","seq":...`). It
counts them, checks that the seqs of an unfiltered stream run without gap or
duplicate, and, for the first `record` subscribers of a process, keeps each
event's seq with the monotonic time at which its bytes arrived (as ranges:
one `(first, last, time)` per read while the seqs run without a break, so that
recording costs the client O(1) per read, not per event). CLOCK_MONOTONIC
is one clock for every process on the machine, so those times compare directly
with the COMMIT times that writer processes take.

The parent drives the processes over pipes: `start` (connect, wait for
`synced`), `status`, `stop` (disconnect, return everything).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench.common import mp_context, raise_nofile

SEQ_RE = re.compile(rb'data: \{"cursor":"(\d+)","seq"')
CURSOR_MARK = b'"cursor":"'
SYNCED_RE = re.compile(rb'event: synced\ndata: \{"cursor":"(\d+)"')
CHANGE_MARK = b'","seq":'  # once per change event (a snapshot row has "cursor":null)

COUNT, SEQS = "count", "seqs"


class SSEClient(asyncio.Protocol):
    """One subscription."""

    def __init__(self, request: bytes, mode: str, record: bool) -> None:
        self.request = request
        self.mode = mode
        self.transport: asyncio.Transport | None = None
        self.head: bytearray | None = bytearray()
        self.status = 0
        self.chunked = False
        self.remaining = 0
        self.need_crlf = False
        self.pending = b""
        self.text = b""
        self.count = 0
        self.bytes = 0
        self.pings = 0
        self.first_t = 0.0
        self.last_t = 0.0
        self.last_seq = -1
        self.gaps = 0
        self.dups = 0
        self.synced: int | None = None
        self.synced_t = 0.0
        self.reset = False
        self.ended = False
        self.lost = False  # the connection closed before we stopped it
        self.stopping = False
        self.error = ""
        self.settled: asyncio.Event | None = None  # set once synced, ended or lost
        # Recorded arrivals as ranges: seqs firsts[k]..lasts[k] arrived at times[k].
        self.firsts: array[int] | None = array("q") if record else None
        self.lasts: array[int] | None = array("q") if record else None
        self.times: array[float] | None = array("d") if record else None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stopping:
            return
        self.lost = True
        if exc is not None and not self.error:
            self.error = type(exc).__name__
        self._settle()

    def _settle(self) -> None:
        if self.settled is not None:
            self.settled.set()

    def data_received(self, data: bytes) -> None:
        t = time.monotonic()
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).lower()
            data = bytes(self.head[end + 4 :])
            self.head = None
            parts = head.split(b" ", 2)
            self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            self.chunked = b"transfer-encoding: chunked" in head
            if self.status != 200:
                self.error = f"HTTP {self.status}"
                self.ended = True
                self._settle()
                return
        payload = self._dechunk(data) if self.chunked else data
        if payload:
            self.bytes += len(payload)
            self._events(payload, t)

    def _dechunk(self, data: bytes) -> bytes:
        buf = self.pending + data if self.pending else data
        self.pending = b""
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n:
            if self.remaining:
                take = min(self.remaining, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.need_crlf = True
            elif self.need_crlf:
                if n - pos < 2:
                    self.pending = buf[pos:]
                    break
                pos += 2
                self.need_crlf = False
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    self.pending = buf[pos:]
                    break
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
                pos = eol + 2
                if size == 0:
                    self.ended = True
                    self._settle()
                    break
                self.remaining = size
        return out[0] if len(out) == 1 else b"".join(out)

    def _events(self, payload: bytes, t: float) -> None:
        if b": ping" in payload:
            self.pings += 1
        buf = self.text + payload if self.text else payload
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.text = buf
            return
        seg, self.text = buf[: end + 2], buf[end + 2 :]
        if self.synced is None:
            self._find_synced(seg, t)
        if b"event: reset" in seg:
            self.reset = True
        if self.mode == COUNT:
            n = seg.count(CHANGE_MARK)
            if n:
                self._arrived(n, t)
            return
        n = seg.count(CHANGE_MARK)
        if not n:
            return
        self._arrived(n, t)
        # Cheap path (one read, one range): the seqs run without a break from the last seen.
        m = SEQ_RE.search(seg)  # a change's data, never the `synced` event's
        assert m is not None
        first = int(m.group(1))
        j = seg.rfind(CHANGE_MARK)
        last = int(seg[seg.rfind(CURSOR_MARK, 0, j) + len(CURSOR_MARK) : j])
        if last - first + 1 == n and (self.last_seq < 0 or first == self.last_seq + 1):
            self.last_seq = last
            self._record(first, last, t)
            return
        seqs = [int(x) for x in SEQ_RE.findall(seg)]
        self._check(seqs)
        for x in seqs:
            self._record(x, x, t)

    def _record(self, first: int, last: int, t: float) -> None:
        if self.firsts is not None and self.lasts is not None and self.times is not None:
            self.firsts.append(first)
            self.lasts.append(last)
            self.times.append(t)

    def _find_synced(self, seg: bytes, t: float) -> None:
        m = SYNCED_RE.search(seg)
        if m:
            self.synced = int(m.group(1))
            self.synced_t = t
            if self.last_seq < 0:
                self.last_seq = self.synced
            self._settle()

    def _arrived(self, n: int, t: float) -> None:
        self.count += n
        self.last_t = t
        if not self.first_t:
            self.first_t = t

    def _check(self, seqs: list[int]) -> None:
        """Gaps and duplicates, for a stream that should carry every seq."""
        last = self.last_seq
        for s in seqs:
            if last >= 0:
                if s <= last:
                    self.dups += 1
                    continue
                if s != last + 1:
                    self.gaps += s - last - 1
            last = s
        self.last_seq = last

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count, "bytes": self.bytes, "pings": self.pings,
            "first_t": self.first_t, "last_t": self.last_t, "last_seq": self.last_seq,
            "gaps": self.gaps, "dups": self.dups, "synced": self.synced,
            "synced_t": self.synced_t, "reset": self.reset, "ended": self.ended,
            "lost": self.lost, "error": self.error,
        }  # fmt: skip


def _request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _run(
    pipe: Connection,
    host: str,
    port: int,
    paths: Sequence[str],
    mode: str,
    record: int,
    headers: dict[str, str],
    concurrency: int,
    connect_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    clients: list[SSEClient] = []
    sem = asyncio.Semaphore(concurrency)

    async def open_one(i: int, path: str) -> None:
        client = SSEClient(_request(host, port, path, headers), mode, i < record)
        client.settled = asyncio.Event()
        clients.append(client)
        async with sem:
            try:
                await loop.create_connection(lambda: client, host, port)
            except OSError as exc:
                client.error = f"connect: {exc}"
                client.ended = True
                return
            # Hold the slot until the stream is live: a flood of half-open streams
            # measures the accept queue, not the server.
            try:
                await asyncio.wait_for(client.settled.wait(), connect_timeout)
            except TimeoutError:
                client.error = client.error or "no synced event"

    await asyncio.gather(*(open_one(i, p) for i, p in enumerate(paths)))
    failed = [c for c in clients if c.synced is None]
    pipe.send(("ready", len(clients) - len(failed), [c.error for c in failed][:5]))

    commands: asyncio.Queue[Any] = asyncio.Queue()

    def on_command() -> None:
        try:
            commands.put_nowait(pipe.recv())
        except EOFError:  # the parent went away
            commands.put_nowait("stop")

    loop.add_reader(pipe.fileno(), on_command)
    while True:
        cmd = await commands.get()
        if cmd == "status":
            pipe.send(_status(clients))
        elif cmd == "stop":
            loop.remove_reader(pipe.fileno())
            for c in clients:
                c.stopping = True
                if c.transport is not None:
                    c.transport.abort()
            await asyncio.sleep(0)
            with contextlib.suppress(OSError):
                pipe.send(_result(clients))
            return


def _status(clients: list[SSEClient]) -> dict[str, Any]:
    counts = [c.count for c in clients]
    return {
        "n": len(clients),
        "total": sum(counts),
        "min": min(counts, default=0),
        "last_t": max((c.last_t for c in clients), default=0.0),
        "open": sum(1 for c in clients if not c.lost and not c.ended),
        "pings": sum(c.pings for c in clients),
    }


def _result(clients: list[SSEClient]) -> dict[str, Any]:
    return {
        "subs": [c.summary() for c in clients],
        "records": [(c.firsts, c.lasts, c.times) for c in clients if c.firsts is not None],
    }


def _proc_main(pipe: Connection, args: tuple[Any, ...]) -> None:
    raise_nofile()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(pipe, *args))


@dataclass
class Subscribers:
    """`paths` opened as SSE streams against host:port from `procs` processes."""

    host: str
    port: int
    paths: Sequence[str]
    procs: int = 1
    mode: str = COUNT
    record: int = 0  # subscribers per process whose (seq, time) pairs are kept
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 64
    connect_timeout: float = 30.0
    _pipes: list[Connection] = field(default_factory=list)
    _procs: list[Any] = field(default_factory=list)
    ready: int = 0
    failures: list[str] = field(default_factory=list)

    def start(self, timeout: float = 120) -> Subscribers:
        ctx = mp_context()
        n = max(1, min(self.procs, len(self.paths)))
        for k in range(n):
            mine = list(self.paths[k::n])
            parent, child = ctx.Pipe()
            args = (self.host, self.port, mine, self.mode, self.record, self.headers,
                    self.concurrency, self.connect_timeout)  # fmt: skip
            p = ctx.Process(target=_proc_main, args=(child, args), daemon=True)
            p.start()
            child.close()
            self._pipes.append(parent)
            self._procs.append(p)
        deadline = time.monotonic() + timeout
        for pipe in self._pipes:
            if not pipe.poll(max(0.1, deadline - time.monotonic())):
                raise RuntimeError("subscribers did not connect in time")
            _, ok, errors = pipe.recv()
            self.ready += ok
            self.failures += errors
        return self

    def status(self) -> dict[str, Any]:
        for pipe in self._pipes:
            pipe.send("status")
        parts = [pipe.recv() for pipe in self._pipes]
        return {
            "n": sum(p["n"] for p in parts),
            "total": sum(p["total"] for p in parts),
            "min": min(p["min"] for p in parts),
            "last_t": max(p["last_t"] for p in parts),
            "open": sum(p["open"] for p in parts),
            "pings": sum(p["pings"] for p in parts),
        }

    def wait_each(self, n: int, timeout: float, idle: float = 5.0) -> dict[str, Any]:
        """Wait until every subscriber has `n` changes, or nothing moved for `idle` s."""
        deadline = time.monotonic() + timeout
        last_total, moved = -1, time.monotonic()
        while True:
            st = self.status()
            if st["min"] >= n or time.monotonic() > deadline:
                return st
            if st["total"] != last_total:
                last_total, moved = st["total"], time.monotonic()
            elif time.monotonic() - moved > idle:
                return st
            time.sleep(0.02)

    def stop(self) -> dict[str, Any]:
        subs: list[dict[str, Any]] = []
        records: list[Any] = []
        for pipe in self._pipes:
            pipe.send("stop")
        for pipe in self._pipes:
            if pipe.poll(60):
                res = pipe.recv()
                subs += res["subs"]
                records += res["records"]
        for p in self._procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        self._pipes.clear()
        self._procs.clear()
        return {"subs": subs, "records": records}

    def __enter__(self) -> Subscribers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._pipes:
            self.stop()
