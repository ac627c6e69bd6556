"""List parameters (GET /api/<r>) and sync-log queries, parsed without a database."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import QueryParams

from api.apps import load_app
from api.listing import cursor, plan
from cdc.errors import CursorError, FilterError
from cdc.filters import TableInfo
from cdc.logquery import parse_query

CLIENTS = load_app("dynapharm").resources[1]
TABLE = TableInfo("public", "clients", {
    "id": "uuid", "branch_id": "uuid", "full_name": "text", "email": "text", "phone": "text",
    "notes": "text", "version": "number", "created_at": "time", "updated_at": "time",
}, ("id",))  # fmt: skip


def listing(query: str) -> Any:
    return plan(CLIENTS, TABLE, QueryParams(query), None)


def test_a_list_request_becomes_bound_parameters_in_a_total_order() -> None:
    got = listing("full_name=eq.Ann&order=full_name.desc,created_at&limit=5")
    assert got.order == (("full_name", True), ("created_at", False), ("id", False))
    assert got.limit == 5 and got.params["limit"] == 6  # one more: is there a next page?
    assert "Ann" in got.params.values()
    after = cursor(got.order, ("Ann", "2026-01-01T00:00:00+00:00",
                               "6f9619ff-8b86-d011-b42d-00c04fc964ff"))  # fmt: skip
    paged = listing(f"order=full_name.desc,created_at&after={after}")
    assert len([k for k in paged.params if k.startswith("k")]) == 3


@pytest.mark.parametrize("query", [
    "limit=0", "limit=501", "limit=%C2%B2", "limit=-1", "order=nope", "order=full_name.up",
    "order=full_name,full_name", "colour=eq.red", "version=eq.x", "after=garbage",
    "search=a%00b", "order=a,b,c,d",
])  # fmt: skip
def test_bad_list_parameters_are_400s(query: str) -> None:
    with pytest.raises(FilterError):
        listing(query)


def test_a_cursor_belongs_to_its_order() -> None:
    after = cursor((("id", False),), ("6f9619ff-8b86-d011-b42d-00c04fc964ff",))
    with pytest.raises(FilterError, match="another order"):
        listing(f"order=full_name&after={after}")


def test_sync_log_queries() -> None:
    q = parse_query([("table", "clients,orders"), ("op", "insert,update"), ("limit", "10"),
                     ("order", "desc"), ("from", "2026-01-01")])  # fmt: skip
    assert q.tables == ("clients", "orders") and q.ops == ("INSERT", "UPDATE")
    assert q.limit == 10 and q.descending and q.start is not None


@pytest.mark.parametrize("params", [
    [("op", "merge")], [("limit", "0")], [("limit", "1001")], [("txid", "-1")],
    [("order", "sideways")], [("pk", "1")], [("table", "a,b"), ("pk", "1")], [("actor", "")],
    [("from", "yesterday")], [("txid", "\uff11\uff12")],  # fullwidth digits
])  # fmt: skip
def test_bad_sync_log_queries_are_400s(params: list[tuple[str, str]]) -> None:
    with pytest.raises(FilterError):
        parse_query(params)


def test_bad_sync_log_cursors_are_400s() -> None:
    with pytest.raises(CursorError):
        parse_query([("after", "x")])
