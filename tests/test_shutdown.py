"""Shutdown: SIGINT (Ctrl-C) or SIGTERM with streams open ends every stream cleanly.

Each open stream is sent `retry:` and its response then completes (the chunked
body's last chunk, then EOF), so its client reconnects to another process; the
log shows no cut response and no traceback; the process exits 0 within seconds.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdc import db
from cdc.events import encode_retry
from tests.live import Server
from tests.natsserver import NatsServer, RelayProcess, broker_env, gateway, running_nats

# Three streams in different shapes: live only, a snapshot first, a catch-up first.
PATHS = (
    "/events?tables=branches",
    "/events?tables=branches,clients&snapshot=true",
    "/events?since=earliest",
)
PROMPT_S = 5.0  # from the signal to the process's exit
UNCLEAN = ("Traceback", "ASGI", "Exception in", "ERROR")
MARK = b"Shutdown"  # the name of the branch each stream receives before the signal


class RawStream:
    """A stream read as raw bytes on a thread: `retry:` alone dispatches no SSE event,
    and a cut body (no last chunk) must show as an error, not as an end."""

    def __init__(self, base: str, path: str) -> None:
        self.body = bytearray()
        self.error: BaseException | None = None
        self.synced = threading.Event()
        self.ended = threading.Event()
        self._grew = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(base + path,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        try:
            with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=None)) as response:
                response.raise_for_status()
                for chunk in response.iter_raw():
                    with self._grew:
                        self.body += chunk
                        self._grew.notify_all()
                    if b"event: synced\n" in self.body:
                        self.synced.set()
        except BaseException as exc:  # a cut response: httpx.RemoteProtocolError
            self.error = exc
        finally:
            self.ended.set()
            with self._grew:
                self._grew.notify_all()

    def wait_for(self, data: bytes, timeout: float = 10) -> None:
        """Until the body holds `data` (failing if the stream ends first)."""
        with self._grew:
            ok = self._grew.wait_for(lambda: data in self.body or self.ended.is_set(), timeout)
        assert ok and data in self.body, f"{data!r} not received; got {bytes(self.body)!r}"


@pytest.fixture
def log() -> Iterator[Any]:
    """The server's stderr: an unnamed temporary file (nothing is left behind)."""
    with tempfile.TemporaryFile() as f:
        yield f


def open_streams(srv: Server, url: str) -> list[RawStream]:
    """The streams of PATHS, each past `synced` and live: a change written now reached each."""
    streams = [RawStream(srv.base, path) for path in PATHS]
    for s in streams:
        assert s.synced.wait(15) or s.ended.is_set()
        assert s.error is None and s.synced.is_set(), (s.error, bytes(s.body))
    code = f"S{uuid.uuid4().hex[:8]}"
    with db.connect(url) as conn:
        conn.execute("INSERT INTO branches (code, name) VALUES (%s, %s)", (code, MARK.decode()))
    for s in streams:
        s.wait_for(code.encode())
    return streams


def stop_by(srv: Server, sig: signal.Signals) -> float:
    """Send `sig`; the seconds until the process exited, asserting it exited 0."""
    assert srv.proc is not None
    started = time.monotonic()
    srv.proc.send_signal(sig)
    code = srv.proc.wait(PROMPT_S * 2)
    assert code == 0, f"exit code {code} after {sig.name}"
    return time.monotonic() - started


def assert_clean(log: Any) -> None:
    log.seek(0)
    text = log.read().decode(errors="replace")
    for line in text.splitlines():
        assert not any(word in line for word in UNCLEAN), text


def assert_ended_with_retry(streams: list[RawStream]) -> None:
    """Each stream got `retry:` after the change written, nothing else but perhaps a
    heartbeat (no `error` event), then a complete end of body."""
    for s in streams:
        assert s.ended.wait(PROMPT_S), "the stream is still open"
        assert s.error is None, f"the response was cut: {s.error!r}"
        after = bytes(s.body).rsplit(MARK, 1)[1].split(b"\n\n", 1)[1]
        blocks = after.split(b"\n\n")
        assert blocks.pop() == b"" and blocks.pop() == encode_retry()[:-2], after
        assert all(b.startswith(b":") for b in blocks), after  # heartbeats only


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_ends_each_open_stream_with_retry_and_the_server_exits_0(
    db_url: str, log: Any, sig: signal.Signals
) -> None:
    srv = Server(db_url, env={"PGTIDE_LOG_LEVEL": "INFO"}).start(stderr=log)
    try:
        streams = open_streams(srv, db_url)
        took = stop_by(srv, sig)
    finally:
        srv.kill()
    assert_ended_with_retry(streams)
    assert took < PROMPT_S
    assert_clean(log)


def test_a_server_without_streams_stops_cleanly_too(db_url: str, log: Any) -> None:
    srv = Server(db_url, env={"PGTIDE_LOG_LEVEL": "INFO"}).start(stderr=log)
    try:
        assert httpx.get(f"{srv.base}/api/branches", timeout=10).status_code == 200
        took = stop_by(srv, signal.SIGTERM)
    finally:
        srv.kill()
    assert took < PROMPT_S
    assert_clean(log)


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    yield from running_nats(tmp_path)


def test_a_gateway_ends_its_streams_the_same_way(db_url: str, log: Any, nats: NatsServer) -> None:
    relay = RelayProcess(db_url, broker_env(nats)).start()
    srv = gateway(db_url, nats, PGTIDE_LOG_LEVEL="INFO")
    try:
        srv.start(stderr=log)
        streams = open_streams(srv, db_url)
        took = stop_by(srv, signal.SIGTERM)
    finally:
        srv.kill()
        relay.stop()
    assert_ended_with_retry(streams)
    assert took < PROMPT_S
    assert_clean(log)
