"""A stream whose client stops taking bytes is cut after the send timeout; one whose
client reads is never cut, however long it lasts (api/stream.py). No database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from sse_starlette.sse import SendTimeoutError

from api.stream import _TicketedStream
from cdc.streams import Streams


def test_a_send_the_client_never_takes_ends_the_response() -> None:
    async def go() -> float:
        streams = Streams()
        ticket = streams.admit("owner", None)
        assert ticket is not None

        async def body() -> AsyncIterator[bytes]:
            while True:
                yield b"data: x\n\n"

        sent: list[Any] = []
        stuck = asyncio.Event()  # never set: the client never reads

        async def send(message: Any) -> None:
            sent.append(message)
            if message.get("type") == "http.response.body":
                await stuck.wait()

        async def receive() -> Any:
            await asyncio.Event().wait()  # no disconnect either

        response = _TicketedStream(streams, ticket, body(), ping=600, send_timeout=0.2)
        scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET",
                 "path": "/events", "headers": []}  # fmt: skip
        started = time.monotonic()
        # sse-starlette ends the response by raising SendTimeoutError; uvicorn then
        # closes the connection.
        with anyio.fail_after(5), pytest.raises(SendTimeoutError):
            await response(scope, receive, send)
        assert len(streams) == 0  # the ticket was released
        assert sent[0]["type"] == "http.response.start"
        return time.monotonic() - started

    took = asyncio.run(go())
    assert 0.15 < took < 3, took


def test_a_stream_longer_than_the_timeout_is_not_cut_while_the_client_reads() -> None:
    """Each send's timeout ends with its send: a stale one would cut this stream midway."""

    async def go() -> list[Any]:
        streams = Streams()
        ticket = streams.admit("owner", None)
        assert ticket is not None

        async def body() -> AsyncIterator[bytes]:
            for i in range(20):
                await asyncio.sleep(0.02)  # 0.4 s in all, 8 times the timeout
                yield b"data: %d\n\n" % i

        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            await asyncio.Event().wait()

        response = _TicketedStream(streams, ticket, body(), ping=600, send_timeout=0.05)
        scope = {"type": "http", "asgi": {"spec_version": "2.4"}, "method": "GET",
                 "path": "/events", "headers": []}  # fmt: skip
        with anyio.fail_after(5):
            await response(scope, receive, send)
        return sent

    sent = asyncio.run(go())
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert b"".join(m["body"] for m in bodies).count(b"data:") == 20
    assert bodies[-1]["more_body"] is False  # it ended by itself, not cut
