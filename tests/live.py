"""End-to-end helpers: a real `pgtide serve` process on a free port, and a real SSE client.

httpx's in-process ASGI transport buffers whole responses, so the stream tests
talk to uvicorn over TCP, reading events with httpx-sse in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Poll `base`/ready until it says 200; the process exiting fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"pgtide serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("pgtide serve did not become ready")
        time.sleep(0.05)


class Server:
    """A `pgtide serve` subprocess against one database."""

    def __init__(
        self,
        url: str,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        auth: bool = False,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.url = url
        self.cwd = cwd  # where `module:attr` apps are imported from
        # Tests of other features run without auth; the auth tests ask for it.
        self.args = args if auth else (*args, "--insecure-no-auth")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "PGTIDE_LOG_LEVEL": "WARNING",
            # Tests of other features send requests as fast as they can: no request-rate
            # limit unless a test sets one (tests/test_limits.py).
            "PGTIDE_RATE_LIMIT_PER_S": "0",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30, stderr: IO[bytes] | None = None) -> Server:
        """Start it and wait until it is ready; its stderr goes to `stderr` if given."""
        cmd = [sys.executable, "-m", "api.cli", "serve", "--no-migrate", "--port", str(self.port)]
        cmd += self.args
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.cwd, stderr=stderr)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        """Poll /ready until it says 200 (the process exiting fails at once)."""
        assert self.proc is not None
        wait_ready(self.base, self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Stream:
    """An SSE subscription, read by httpx-sse on its own event loop thread into a queue.

    The reader runs as an asyncio task so that `close()` can cancel it at once,
    even while it waits for the next byte.
    """

    def __init__(self, base: str, path: str, headers: Mapping[str, str] | None = None) -> None:
        self.events: queue.Queue[ServerSentEvent | BaseException | None] = queue.Queue()
        self.status: int | None = None
        self.headers: httpx.Headers | None = None
        self.last_id: str | None = None
        self._opened = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(
            self._run(base, path, dict(headers or {})), self._loop
        )
        assert self._opened.wait(10), "stream did not open"

    async def _run(self, base: str, path: str, headers: dict[str, str]) -> None:
        try:
            timeout = httpx.Timeout(5, read=None)
            async with (
                httpx.AsyncClient(base_url=base, timeout=timeout) as client,
                aconnect_sse(client, "GET", path, headers=headers) as es,
            ):
                self.status = es.response.status_code
                self.headers = es.response.headers
                self._opened.set()
                if self.status != 200:
                    await es.response.aread()
                    self.events.put(None)
                    return
                async for ev in es.aiter_sse():
                    # A block with no data (our `retry:` hint) dispatches nothing (SSE spec).
                    if ev.data or ev.event != "message":
                        self.events.put(ev)
            self.events.put(None)  # the server ended the stream
        except asyncio.CancelledError:
            self.events.put(None)
        except BaseException as exc:
            self._opened.set()
            self.events.put(exc)

    def next(self, timeout: float = 30) -> ServerSentEvent | None:
        """The next event (None: the stream ended)."""
        item = self.events.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        if item is not None and item.id:
            self.last_id = item.id
        return item

    def until(self, event: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Changes received before the named control event (which is consumed)."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next(max(0.01, deadline - time.monotonic()))
            assert ev is not None, f"stream ended before {event!r}"
            if ev.event == event:
                return out
            if ev.event == "message":
                out.append(json.loads(ev.data))

    def changes(self, n: int, timeout: float = 30) -> list[dict[str, Any]]:
        """The next `n` change events."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            ev = self.next(max(0.01, deadline - time.monotonic()))
            assert ev is not None, f"stream ended after {len(out)} of {n} changes"
            if ev.event == "message":
                out.append(json.loads(ev.data))
        return out

    def close(self) -> None:
        """Disconnect (cancels the reader) and stop its loop."""
        self._loop.call_soon_threadsafe(self._cancel)
        with contextlib.suppress(BaseException):
            self._task.result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _cancel(self) -> None:
        for task in asyncio.all_tasks(self._loop):
            task.cancel()


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem+json body of an error response (asserting its media type)."""
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code and body["detail"]
    return body
