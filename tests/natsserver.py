"""A real nats-server with JetStream for the scale-out tests, and processes that use it.

Each test gets its own server on a free port with a temporary store
(`nats-server -js -sd <tmp> -p <port> -a 127.0.0.1`), which it may stop, kill
and start again on the same port and store. Without the binary (Debian's
`nats-server` package, which .ci/run installs) the tests skip, saying so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import Server, free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
MISSING = (
    f"NATS SCALE-OUT TESTS NOT RUN: no nats-server binary ({NATS_SERVER}); "
    "install Debian's nats-server package (`apt-get install nats-server`, as .ci/run does)"
)


def require_nats_server() -> str:
    """The binary's path, or skip the test loudly."""
    if not os.access(NATS_SERVER, os.X_OK):
        pytest.skip(MISSING)
    return NATS_SERVER


class NatsServer:
    """One nats-server process with JetStream, restartable on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.binary = require_nats_server()
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> NatsServer:
        cmd = [self.binary, "-js", "-sd", str(self.store), "-p", str(self.port), "-a", "127.0.0.1"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nats-server exited with {self.proc.returncode}")
            if _jetstream_answers(self.url):
                return self
            if time.monotonic() > deadline:
                raise AssertionError("nats-server did not become ready")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _jetstream_answers(url: str) -> bool:
    host, port = url.removeprefix("nats://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            pass
    except OSError:
        return False

    async def check() -> bool:
        import nats

        try:
            nc = await nats.connect(url, allow_reconnect=False, connect_timeout=1)
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


def running_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream, stopped at the end (a test module's fixture body)."""
    srv = NatsServer(tmp_path / "jetstream").start()
    try:
        yield srv
    finally:
        srv.stop()


def broker_env(nats: NatsServer, **extra: str) -> dict[str, str]:
    """The environment of a relay or gateway using `nats`."""
    return {"PGTIDE_BROKER_URL": nats.url, "PGTIDE_BROKER_STREAM": "PGTIDE", **extra}


class RelayProcess:
    """A `pgtide relay` subprocess."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url = url
        self.env = {**os.environ, "DATABASE_URL": url, "PGTIDE_LOG_LEVEL": "WARNING", **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RelayProcess:
        cmd = [sys.executable, "-m", "api.cli", "relay"]
        self.proc = subprocess.Popen(cmd, env=self.env)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

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


def gateway(url: str, nats: NatsServer, **env: str) -> Server:
    """A `pgtide serve` gateway (not started)."""
    return Server(url, env=broker_env(nats, **env))


def stream_messages(nats_url: str, stream: str = "PGTIDE") -> list[dict[str, Any]]:
    """Every message the stream holds, in order: stream seq, subject, headers, body."""

    async def read() -> list[dict[str, Any]]:
        import nats
        from nats.js.errors import NotFoundError

        nc = await nats.connect(nats_url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                return []
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                out.append({"stream_seq": seq, "subject": msg.subject,
                            "headers": dict(msg.headers or {}), "body": msg.data})  # fmt: skip
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def stream_info(nats_url: str, stream: str = "PGTIDE") -> Any:
    async def read() -> Any:
        import nats

        nc = await nats.connect(nats_url, allow_reconnect=False)
        try:
            return await nc.jetstream().stream_info(stream)
        finally:
            await nc.close()

    return asyncio.run(read())


def wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    """Poll `predicate` (a cheap check of state another process owns) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
