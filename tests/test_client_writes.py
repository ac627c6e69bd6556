"""pgtide_client's writes, await_txid and a replica of a filtered resource, on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
from typing import Any

import pytest

from pgtide_client import (
    AsyncClient,
    Change,
    Client,
    NotFound,
    PreconditionFailed,
    Replica,
    Synced,
    TxidTimeout,
)
from tests.live import Server
from tests.proxy import Proxy
from tests.writing import Api


def test_writes_come_back_on_the_stream_and_a_row_leaving_the_filter_leaves_the_replica(
    live: tuple[Server, str], api: Api
) -> None:
    srv, _ = live
    here, there = api.branch()["id"], api.branch()["id"]

    async def scenario() -> None:
        replica = Replica()
        async with AsyncClient(srv.base, origin="tablet-9") as pg:
            synced = asyncio.Event()
            changes: list[Change] = []

            async def follow() -> None:
                async for ev in pg.subscribe(tables="clients", filters={"branch_id": f"eq.{here}"},
                                             snapshot=True, replica=replica):  # fmt: skip
                    if isinstance(ev, Synced):
                        synced.set()
                    elif isinstance(ev, Change):
                        changes.append(ev)

            task = asyncio.create_task(follow())
            await asyncio.wait_for(synced.wait(), 30)
            made = await pg.create("clients", {"branch_id": here, "full_name": "Ann"})
            assert made.status == 201 and made.etag == '"1"' and made.txid
            await pg.await_txid(made.txid, timeout=10)
            cid = made.row["id"]
            assert replica.get("clients", {"id": cid}) == made.row

            paid = await pg.patch("clients", cid, {"notes": "vip"}, if_match=1)
            assert paid.row["version"] == 2
            with pytest.raises(PreconditionFailed) as stale:
                await pg.patch("clients", cid, {"notes": "late"}, if_match=made.etag or "")
            assert stale.value.current is not None and stale.value.current["version"] == 2
            await pg.await_txid(paid.txid or "", timeout=10)
            assert (replica.get("clients", {"id": cid}) or {}).get("notes") == "vip"

            # Moved to another branch: out of the subscription's filter; the stream says so.
            moved = await pg.patch("clients", cid, {"branch_id": there}, if_match=paid.etag)
            await pg.await_txid(moved.txid or "", timeout=10)
            assert changes[-1].left and changes[-1].op == "UPDATE"
            assert replica.get("clients", {"id": cid}) is None

            gone = await pg.delete("clients", cid, if_match=moved.row["version"])
            assert gone.row["id"] == cid
            with pytest.raises(NotFound):
                await pg.get("clients", cid)
            # Deleting a row of another branch than the filter's: that change never arrives.
            with pytest.raises(TxidTimeout):
                await pg.await_txid(gone.txid or "", timeout=0.5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(scenario(), 60))
    log = api.sql.execute(
        "SELECT op, origin FROM pgtide.sync_log WHERE table_name = 'clients' AND (new_row ->> "
        "'full_name' = 'Ann' OR old_row ->> 'full_name' = 'Ann') ORDER BY id"
    ).fetchall()
    assert log == [("INSERT", "tablet-9"), ("UPDATE", "tablet-9"), ("UPDATE", "tablet-9"),
                   ("DELETE", "tablet-9")]  # fmt: skip


def test_a_write_whose_answer_is_lost_is_resent_with_its_key_and_applied_once(
    live: tuple[Server, str], api: Api
) -> None:
    srv, _ = live
    branch = api.branch()["id"]
    proxy = Proxy(srv.port)
    result: dict[str, Any] = {}
    try:
        with Client(proxy.base) as pg:
            proxy.hold()  # the server's answer is swallowed: the client waits for it

            def write() -> None:
                result["w"] = pg.create("clients", {"branch_id": branch, "full_name": "Once"})

            writer = threading.Thread(target=write)
            writer.start()
            assert proxy.answered.wait(30)  # the server wrote it and answered
            proxy.forward()
            proxy.drop()  # the connection dies before the answer got through
            writer.join(30)
            written = result["w"]
            assert written.replayed and written.status == 201
            again = pg.get("clients", written.row["id"])
            assert again.row == written.row and again.etag == '"1"'
            assert [r["id"] for r in pg.rows("clients", {"branch_id": f"eq.{branch}"})] == [
                written.row["id"]
            ]
    finally:
        proxy.close()
    count = api.scalar("SELECT count(*) FROM pgtide.sync_log WHERE pk ->> 'id' = %s",
                       written.row["id"])  # fmt: skip
    assert count == 1


def test_tail_url_follows_a_remote_server_through_the_client(
    live: tuple[Server, str], api: Api
) -> None:
    srv, _ = live
    cmd = [sys.executable, "-m", "api.cli", "tail", "--url", srv.base, "--json",
           "--tables", "branches", "--where", "code=like.x"]  # fmt: skip
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [f"Error: {srv.base} refused the stream: filter "
                                       "code='like.x': unknown operator 'like'; use eq, neq, lt,"
                                       " lte, gt, gte, in or is (as column=op.value)"]  # fmt: skip
    proc = subprocess.Popen(cmd[:-2], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["event"] == "synced"
        made = api.branch()
        line = json.loads(proc.stdout.readline())
        assert (line["event"], line["op"], line["row"]) == ("change", "INSERT", made)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
