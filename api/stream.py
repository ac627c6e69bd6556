"""`GET /events`: the change stream as Server-Sent Events (docs/design.md, Stream)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import anyio
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.problems import problem
from cdc.errors import FilterError
from cdc.filters import build_filter, parse_list
from cdc.stream import events, prepare
from cdc.streams import Streams, Ticket

# Query parameters that are not column filters.
RESERVED = frozenset({"tables", "ops", "topics", "since", "snapshot", "access_token"})
HEARTBEAT_S = 15
STOP_GRACE_S = 1.0  # how long a stopped stream may take to end before its response is cut


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("false", "0", ""):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise FilterError(f"{name} must be true or false, got {value!r}")


async def stream_events(request: Request) -> Response:
    """Stream changes matching the request's filters; 400 before streaming if it is bad."""
    state: Any = request.state
    if not state.listener.ready:
        return problem(503, "the change feed is not connected to the database yet",
                       headers={"Retry-After": "1"})  # fmt: skip
    principal = state.principal
    settings = state.settings
    # Counted from here until the response ends, whatever phase the stream is in:
    # counting and registering are one step, so concurrent opens cannot all pass.
    ticket = state.streams.admit(principal.token_id, settings.max_streams_per_token)
    if ticket is None:
        held = state.streams.count(principal.token_id)
        return problem(429, f"this token already holds {held} open streams",
                       headers={"Retry-After": "5"})  # fmt: skip
    try:
        response = await _open(request, ticket)
    except BaseException:
        state.streams.release(ticket)
        raise
    if not isinstance(response, _TicketedStream):
        state.streams.release(ticket)
    return response


async def _open(request: Request, ticket: Ticket) -> Response:
    state: Any = request.state
    principal = state.principal
    settings = state.settings
    params = request.query_params
    if any("\x00" in k or "\x00" in v for k, v in params.multi_items()):
        return problem(400, "query parameters must not contain NUL characters")
    # A bad filter or cursor raises FilterError or CursorError: 400 (api/errors.py).
    tables = params.get("tables")
    catalog = await state.catalog.get(parse_list(tables, "tables") if tables else ())
    flt = build_filter(
        catalog,
        tables=tables,
        ops=params.get("ops"),
        topics=params.get("topics"),
        columns=[(k, v) for k, v in params.multi_items() if k not in RESERVED],
        branch=principal.branch_id,
        shared_tables=list(settings.pinned_shared_tables),
        tenants=state.registry.tenants(),
    )
    plan = await prepare(
        state.pool,
        catalog,
        flt,
        since=params.get("since"),
        last_event_id=request.headers.get("last-event-id"),
        snapshot=_flag(params.get("snapshot"), "snapshot"),
        source=state.catchup,  # a gateway's stream, for recent cursors
    )
    body = events(
        state.hub, state.pool, plan, ticket,
        snapshots=state.snapshot_pool, snapshot_max_s=settings.snapshot_max_s,
    )  # fmt: skip
    return _TicketedStream(
        state.streams,
        ticket,
        body,
        ping=HEARTBEAT_S,
        headers={"Cache-Control": "no-store"},
        send_timeout=30,
        # Shutdown ends the stream as revocation does: `retry:`, then the response
        # completes, so the client reconnects elsewhere and uvicorn sees no cut response.
        shutdown_event=cast(anyio.Event, _StopOnShutdown(ticket)),
        shutdown_grace_period=STOP_GRACE_S,
    )


class _StopOnShutdown:
    """Stands for sse-starlette's `shutdown_event`: setting it stops the stream's ticket.

    When the server begins to shut down (uvicorn's `should_exit`), sse-starlette sets
    the response's shutdown event, waits up to its grace for the response to end by
    itself, and only then cancels it. Its default (no event, no grace) cancels at
    once: the client gets a truncated chunked body and uvicorn logs "ASGI callable
    returned without completing response". sse-starlette only ever calls `set()`, and
    an object with that one method costs a stream less than an `anyio.Event` and a
    task to watch it.
    """

    __slots__ = ("ticket",)

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket

    def set(self) -> None:
        """The server is shutting down: end the stream with `retry:`."""
        self.ticket.stop()


class _TicketedStream(EventSourceResponse):
    """The event stream; its ticket is released when the response ends, however it ends.

    A stopped ticket (its token revoked) ends the response even while a send is
    blocked on a client that no longer reads.
    """

    def __init__(self, streams: Streams, ticket: Ticket, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.streams = streams
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            # One cancel scope, no extra task: stopping the ticket (revocation, shutdown)
            # cuts the response after a grace if it has not ended by itself.
            with anyio.CancelScope() as response:
                loop = asyncio.get_running_loop()

                def cut_later() -> None:
                    loop.call_later(STOP_GRACE_S, response.cancel)

                self.ticket.on_stop = cut_later
                if self.ticket.is_stopped:
                    cut_later()
                await EventSourceResponse.__call__(self, scope, receive, send)
        finally:
            self.ticket.on_stop = None
            self.streams.release(self.ticket)
