"""`"left": true`: the stream says when an UPDATE takes a row out of a subscriber's filters.

Pure (the hub and the filters, no database): byte-exact, as the stream sends them.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from cdc import hub
from cdc.events import encode_change
from cdc.filters import StreamFilter, TableInfo, build_filter
from cdc.reader import Change

CATALOG = {
    "public.orders": TableInfo(
        "public", "orders", {"id": "number", "branch_id": "text", "status": "text"}, ("id",)
    )
}


def update(seq: int, old: dict[str, Any], new: dict[str, Any]) -> Change:
    changed = sorted(k for k in new if new[k] != old.get(k))
    return Change(seq, seq, "7", datetime(2030, 1, 1, tzinfo=UTC), "public", "orders", "UPDATE",
                  json.dumps({"id": new["id"]}), json.dumps(new), json.dumps(old), changed,
                  None, None, None, "postgres")  # fmt: skip


def flt(*columns: tuple[str, str], branch: str | None = None) -> StreamFilter:
    return build_filter(CATALOG, tables="orders", ops=None, topics=None, columns=columns,
                        branch=branch)  # fmt: skip


def chunks_for(subscribers: list[StreamFilter], changes: list[Change]) -> list[bytes]:
    async def run() -> list[bytes]:
        h = hub.Hub()
        h.start_at(0)
        subs = [h.subscribe(f) for f in subscribers]
        h.publish(changes)
        return [b"".join(c.data for c in await s.next_chunks(1)) for s in subs]

    return asyncio.run(run())


def test_an_update_leaving_the_column_filters_is_marked_left_for_that_filter_only() -> None:
    leaves = update(1, {"id": 1, "branch_id": "b1", "status": "new"},
                    {"id": 1, "branch_id": "b1", "status": "paid"})  # fmt: skip
    stays = update(2, {"id": 2, "branch_id": "b1", "status": "new"},
                   {"id": 2, "branch_id": "b1", "status": "new", "note": "x"})  # fmt: skip
    enters = update(3, {"id": 3, "branch_id": "b1", "status": "paid"},
                    {"id": 3, "branch_id": "b1", "status": "new"})  # fmt: skip
    plain, only_new = chunks_for([flt(), flt(("status", "eq.new"))], [leaves, stays, enters])

    # Unfiltered: the shared encoding, byte for byte, with no `left` anywhere.
    assert plain == encode_change(leaves) + encode_change(stays) + encode_change(enters)
    assert b'"left"' not in plain
    # Filtered: the same bytes, but the UPDATE that leaves carries `"left":true` at the end.
    marked = encode_change(leaves)
    assert marked.endswith(b'"mutation_id":null}\n\n')
    expected = marked[:-3] + b',"left":true}\n\n' + encode_change(stays) + encode_change(enters)
    assert only_new == expected
    event = json.loads(only_new.split(b"\n\n")[0].split(b"data: ")[1])
    assert event["left"] is True and event["op"] == "UPDATE" and event["row"]["status"] == "paid"


def test_a_pinned_subscriber_with_column_filters_sees_rows_leave_by_branch_and_by_filter() -> None:
    pinned = flt(("status", "eq.new"), branch="b1")
    moves_out = update(1, {"id": 1, "branch_id": "b1", "status": "new"},
                       {"id": 1, "branch_id": "b2", "status": "new"})  # fmt: skip
    leaves = update(2, {"id": 2, "branch_id": "b1", "status": "new"},
                    {"id": 2, "branch_id": "b1", "status": "paid"})  # fmt: skip
    # From another branch, where it passed the filter, into b1 where it does not: the
    # subscriber never held it and does not hold it now, so it is not sent at all.
    foreign = update(3, {"id": 3, "branch_id": "b2", "status": "new"},
                     {"id": 3, "branch_id": "b1", "status": "paid"})  # fmt: skip
    moves_in = update(4, {"id": 4, "branch_id": "b2", "status": "paid"},
                      {"id": 4, "branch_id": "b1", "status": "new"})  # fmt: skip
    (data,) = chunks_for([pinned], [moves_out, leaves, foreign, moves_in])
    events = [json.loads(b.split(b"data: ")[1]) for b in data.split(b"\n\n") if b]
    assert [(e["seq"], e["op"], e.get("left")) for e in events] == [
        (1, "DELETE", None), (2, "UPDATE", True), (4, "INSERT", None)
    ]  # fmt: skip
    assert events[0]["row"] is None and events[2]["old"] is None


def test_view_leaves_other_changes_alone() -> None:
    f = flt(("status", "eq.new"))
    stays = update(1, {"id": 1, "branch_id": "b1", "status": "new"},
                   {"id": 1, "branch_id": "b2", "status": "new"})  # fmt: skip
    assert f.view(stays) is stays
    assert flt().view(stays) is stays and not flt().rewrites
