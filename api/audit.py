"""Audit routes (docs/design.md, HTTP contract: Audit; docs/audit.md).

- `GET /api/sync-log`: sequenced changes filtered by table, op, pk, actor,
  origin, txid, from/to, paginated by cursor (`after`; `next`, the next page's
  URL, and `next_cursor`, its `after`; a `Link` header).
- `GET /api/{resource}/{id}/history`: one row's changes in seq order with
  before/after values per column; 404 when the row never had a change.

Both need the `audit` scope (api/auth.py) and a token not pinned to a branch:
the log holds every branch's rows and the values they had, so a pinned token
is refused rather than shown a filtered log that looks complete.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.paging import next_page
from api.problems import problem
from cdc.audit import (
    ahistory,
    akey_of,
    alist_changes,
    change_record,
    history_record,
    parse_query,
    row_key,
)
from cdc.jsontext import dumps

JSON = "application/json"


def _pinned(request: Request) -> Response | None:
    principal = getattr(request.state, "principal", None)
    if principal is not None and principal.branch_id is not None:
        return problem(403, "audit reads need a token that is not pinned to a branch")
    return None


async def sync_log(request: Request) -> Response:
    """`GET /api/sync-log`: one page of the log; 400 problem+json for a bad filter."""
    if (refused := _pinned(request)) is not None:
        return refused
    state: Any = request.state
    query = parse_query(request.query_params.multi_items())  # FilterError, CursorError: 400
    async with state.pool.connection() as conn:
        page = await alist_changes(conn, query)
    after = page.next_cursor
    params = None if after is None else replace(query, after=after).to_params().items()
    next_url, headers = next_page(request.url.path, params)
    body = {
        "changes": [change_record(c) for c in page.changes],
        "next": next_url,
        "next_cursor": None if after is None else str(after),  # the `after` in `next`
    }
    return Response(dumps(body), media_type=JSON, headers=headers)


async def row_history(request: Request) -> Response:
    """`GET /api/{resource}/{id}/history`: the row's changes, oldest first."""
    if (refused := _pinned(request)) is not None:
        return refused
    state: Any = request.state
    table, raw_id = request.path_params["resource"], request.path_params["id"]
    async with state.pool.connection() as conn:
        key = await akey_of(conn, table)
        if key is None:
            return problem(404, f"no tracked table {table!r}")
        pk = row_key(key, table, raw_id)  # FilterError: 400
        entries = await ahistory(conn, table, pk)
    if not entries:
        return problem(404, f"{table} row {raw_id} has no recorded change")
    body = {"table": table, "pk": pk, "history": [history_record(e) for e in entries]}
    return Response(dumps(body), media_type=JSON)


def audit_routes() -> list[Route]:
    """The audit routes; mount them before the generic `/api/{resource}/...` routes."""
    return [
        Route("/api/sync-log", sync_log, methods=["GET"]),
        Route("/api/{resource}/{id}/history", row_history, methods=["GET"]),
    ]
