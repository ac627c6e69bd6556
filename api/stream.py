"""`GET /events`: the change stream as Server-Sent Events (docs/design.md, HTTP contract: Stream)."""

from __future__ import annotations

from typing import Any

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from api.problems import problem
from cdc.errors import CursorError, FilterError
from cdc.filters import build_filter, parse_list
from cdc.stream import events, prepare

# Query parameters that are not column filters.
RESERVED = frozenset({"tables", "ops", "topics", "since", "snapshot", "access_token"})
HEARTBEAT_S = 15


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
    if principal.token_id is not None:
        open_streams = sum(1 for s in state.hub.subscribers if s.owner == principal.token_id)
        if open_streams >= settings.max_streams_per_token:
            return problem(
                429, f"this token already holds {open_streams} open streams",
                headers={"Retry-After": "5"},
            )  # fmt: skip
    params = request.query_params
    if any("\x00" in k or "\x00" in v for k, v in params.multi_items()):
        return problem(400, "query parameters must not contain NUL characters")
    try:
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
    except (FilterError, CursorError) as exc:
        return problem(400, str(exc))
    return EventSourceResponse(
        events(state.hub, state.pool, plan, owner=principal.token_id),
        ping=HEARTBEAT_S,
        headers={"Cache-Control": "no-store"},
        send_timeout=30,
    )
