"""The idle-connection baseline: the smallest Starlette + sse-starlette stream.

`python -m uvicorn bench.floor_app:app` serves `GET /events` with the same
framing as pgtide (a `retry:` hint, a `synced` event, then heartbeats every
15 s) and nothing else: no database, no hub, no filters. What every open SSE
connection costs in this stack before pgtide adds anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


async def _stream() -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    yield b'id: 0\nevent: synced\ndata: {"cursor":"0"}\n\n'
    while True:
        await asyncio.sleep(3600)
        yield b""


async def events(request: Request) -> Response:
    return EventSourceResponse(_stream(), ping=15, headers={"Cache-Control": "no-store"})


async def ready(request: Request) -> Response:
    return JSONResponse({"status": "ready", "seq": 0})


app = Starlette(routes=[Route("/events", events), Route("/ready", ready)])


async def _plain_stream() -> AsyncIterator[bytes]:
    """Heartbeats from the generator itself: one task per stream instead of four."""
    yield b"retry: 1000\n\n"
    yield b'id: 0\nevent: synced\ndata: {"cursor":"0"}\n\n'
    while True:
        await asyncio.sleep(15)
        yield b": ping\n\n"


async def events_plain(request: Request) -> Response:
    return StreamingResponse(
        _plain_stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )  # fmt: skip


app.router.routes.append(Route("/events-plain", events_plain))
