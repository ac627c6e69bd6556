"""The log reader: changes after a cursor, in seq order, joined to pgtide.sync_log."""

from __future__ import annotations

import asyncio
import contextlib

from cdc import db, reader
from cdc.cursor import Cursor
from cdc.sequencer import Sequencer
from cdc.settings import Settings
from tests.sequencing import wait_sequenced


def test_read_after_returns_changes_in_seq_order_with_limit(db_url: str) -> None:
    with db.connect(db_url) as conn:
        conn.execute(b"CREATE TABLE r (id int PRIMARY KEY, v text); SELECT pgtide.track_v1('r');")
        for i in range(5):
            conn.execute("INSERT INTO r VALUES (%s, 'a')", (i,))
        conn.execute("UPDATE r SET v = 'b' WHERE id = 3")
        conn.execute("DELETE FROM r WHERE id = 4")
        assert reader.head(conn) == 0
        assert reader.read_after(conn, Cursor(0)) == []  # logged but not yet sequenced

    async def sequence() -> None:
        task = asyncio.create_task(Sequencer(db_url, Settings()).run())
        await wait_sequenced(db_url, 7)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(sequence())
    with db.connect(db_url) as conn:
        assert reader.head(conn) == 7
        all_changes = reader.read_after(conn, Cursor(0))
        assert [c.seq for c in all_changes] == list(range(1, 8))
        assert [c.op for c in all_changes] == ["INSERT"] * 5 + ["UPDATE", "DELETE"]
        upd = all_changes[5]
        assert (upd.pk, upd.changed, upd.new_row and upd.new_row["v"]) == ({"id": 3}, ["v"], "b")
        assert upd.old_row == {"id": 3, "v": "a"}
        assert int(upd.txid) > 0 and upd.table_name == "r" and upd.schema_name == "public"
        page = reader.read_after(conn, Cursor(2), limit=3)
        assert [c.seq for c in page] == [3, 4, 5]
        assert reader.read_after(conn, Cursor(7)) == []
