"""The hub with made-up changes: fan-out, filters, gaps, a slow subscriber. No database."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from cdc.events import encode_change
from cdc.filters import TableInfo, build_filter
from cdc.hub import Hub
from cdc.reader import Change

INFO = TableInfo("public", "orders", {"id": "number", "status": "text"}, ("id",))
CATALOG = {INFO.qualified: INFO}


def change(seq: int, status: str = "new", table: str = "orders") -> Change:
    return Change(
        seq=seq, id=seq, txid=str(100 + seq), at=datetime(2026, 1, 1, tzinfo=UTC),
        schema_name="public", table_name=table, op="INSERT", pk_json=f'{{"id": {seq}}}',
        row_json=json.dumps({"id": seq, "status": status}), old_json=None, changed=None, actor=None,
        origin=None, mutation_id=None, db_role="app",
    )  # fmt: skip


def flt(**columns: str):  # type: ignore[no-untyped-def]
    return build_filter(CATALOG, tables="orders", ops=None, topics=None,
                        columns=list(columns.items()))  # fmt: skip


def test_each_subscriber_gets_exactly_its_filters_events_in_order() -> None:
    async def go() -> None:
        hub = Hub()
        hub.start_at(0)
        every = hub.subscribe(flt())
        paid = hub.subscribe(flt(status="eq.paid"))
        batch = [change(1), change(2, "paid"), change(3)]
        hub.publish(batch)
        hub.publish(batch[:2])  # already delivered: dropped, not repeated
        got = b"".join(c.data for c in await every.next_chunks(1))
        assert got == b"".join(encode_change(c) for c in batch)
        assert b"".join(c.data for c in await paid.next_chunks(1)) == encode_change(batch[1])
        assert hub.last_seq == 3 and hub.published == 3

    asyncio.run(go())


def test_a_gap_is_refused() -> None:
    async def go() -> None:
        hub = Hub()
        hub.start_at(5)
        with pytest.raises(RuntimeError, match="gap"):
            hub.publish([change(7)])

    asyncio.run(go())


def test_a_subscriber_too_far_behind_is_dropped_and_the_others_go_on() -> None:
    async def go() -> None:
        hub = Hub(max_pending_bytes=600)
        hub.start_at(0)
        slow, fast = hub.subscribe(flt()), hub.subscribe(flt())
        for seq in range(1, 6):
            hub.publish([change(seq)])
            await fast.next_chunks(1)  # keeps up
        assert slow.overflowed and slow not in hub.subscribers and hub.dropped == 1
        assert fast in hub.subscribers and not fast.overflowed

    asyncio.run(go())
