"""The Starlette application. Its lifespan is pgtide's one composition root.

Every JSON error is RFC 9457 `application/problem+json` (`type`, `title`,
`status`, `detail`), produced by the handlers registered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from http import HTTPStatus
from typing import Any, TypedDict

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cdc.settings import Settings

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemResponse(JSONResponse):
    """An RFC 9457 problem document."""

    media_type = PROBLEM_JSON


def problem(
    status: int, detail: str, *, headers: Mapping[str, str] | None = None
) -> ProblemResponse:
    """A problem+json response; `type` is about:blank, so `title` is the status phrase."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    return ProblemResponse(body, status_code=status, headers=headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in {204, 304}:  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = exc.detail
    # Starlette's own 404/405 carry only the status phrase: say what was asked for.
    if detail == HTTPStatus(exc.status_code).phrase:
        if exc.status_code == 404:
            detail = f"no resource at {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
    return problem(exc.status_code, detail, headers=exc.headers)


async def _unhandled(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback itself; the client gets no internals.
    return problem(500, "internal error; the server log has the details")


async def health(request: Request) -> Response:
    """`GET /health`: the process is up (says nothing about the database)."""
    return JSONResponse({"status": "ok"})


class State(TypedDict):
    """What the lifespan hands to request handlers (`request.state`)."""

    settings: Settings


async def _supervise_sequencer(url: str, settings: Settings) -> None:
    """Run the sequencer for good; restart it if it ever fails.

    `Sequencer.run` reconnects on database errors by itself, so only a bug gets
    here; it is logged by name and the sequencer restarted after a growing pause.
    """
    from cdc.sequencer import Sequencer

    pause = 1.0
    while True:
        try:
            await Sequencer(url, settings).run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sequencer task failed; restarting in %.0fs", pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)


def create_app(
    settings: Settings, *, database_url: str | None = None, run_sequencer: bool = True
) -> Starlette:
    """Build the app. With `run_sequencer`, its lifespan runs the sequencer as a task.

    `database_url` is the resolved URL (the CLI resolves it once, starting the
    embedded server if needed); without it the lifespan resolves it from `settings`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        task: asyncio.Task[None] | None = None
        if run_sequencer:
            from cdc import db

            # resolve_url may start the embedded server: blocking, so off the loop.
            url = database_url
            if url is None:
                url = await asyncio.to_thread(db.resolve_url, settings)
            task = asyncio.create_task(_supervise_sequencer(url, settings), name="sequencer")
        try:
            yield {"settings": settings}
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    handlers: dict[Any, Any] = {HTTPException: _http_exception, Exception: _unhandled}
    return Starlette(
        routes=[Route("/health", health, methods=["GET"])],
        lifespan=lifespan,
        exception_handlers=handlers,
    )
