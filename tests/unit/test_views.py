"""A subscriber's view splices the logged text: rewriting an event never re-encodes a row."""

from __future__ import annotations

from datetime import UTC, datetime

from cdc.events import encode_change
from cdc.filters import TableInfo, build_filter
from cdc.reader import Change

INFO = TableInfo("public", "orders", {"id": "number", "branch_id": "text", "total": "number"},
                 ("id",))  # fmt: skip
CATALOG = {INFO.qualified: INFO}
NEW = '{"id": 1, "total": 12.50, "branch_id": "B"}'
OLD = '{"id": 1, "total": 12.50, "branch_id": "A"}'


def moved() -> Change:
    return Change(9, 9, "100", datetime(2026, 12, 1, tzinfo=UTC), "public", "orders", "UPDATE",
                  '{"id": 1}', NEW, OLD, ["branch_id"], None, None, None, "app")  # fmt: skip


def data(c: Change) -> bytes:
    return encode_change(c).split(b"data: ", 1)[1]


def test_a_row_moving_into_a_pinned_branch_is_an_insert_of_the_same_text() -> None:
    pinned = build_filter(CATALOG, tables=None, ops=None, topics=None, columns=(), branch="B")
    c = moved()
    assert pinned.selects(c)
    seen = pinned.view(c)
    assert seen.op == "INSERT"
    assert f'"op":"INSERT","pk":{{"id": 1}},"row":{NEW},"old":null,"changed":null,'.encode() in (
        data(seen)
    )


def test_a_row_moving_out_is_a_delete_of_the_same_text() -> None:
    pinned = build_filter(CATALOG, tables=None, ops=None, topics=None, columns=(), branch="A")
    seen = pinned.view(moved())
    assert seen.op == "DELETE"
    assert f'"row":null,"old":{OLD},"changed":null,'.encode() in data(seen)


def test_an_unfiltered_subscriber_never_decodes_a_row() -> None:
    everything = build_filter(CATALOG, tables=None, ops=None, topics=None, columns=())
    c = moved()
    assert everything.selects(c) and everything.view(c) is c
    encode_change(c)
    assert c._decoded is None


def test_a_filter_decodes_once_and_compares_exactly() -> None:
    wanted = build_filter(
        CATALOG, tables="orders", ops=None, topics=None, columns=[("total", "eq.12.5")]
    )
    c = moved()
    assert wanted.selects(c)
    assert c._decoded is not None and set(c._decoded) == {"row", "old"}
    assert c.new_row is c.new_row  # decoded once, however many subscribers read it
