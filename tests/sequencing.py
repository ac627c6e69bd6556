"""Waiting for the sequencer: run one in process, or wait until changes have their seq.

Each wait is woken by the sequencer's per-batch NOTIFY (`pgtide_sequenced`), never
by sleeping; a one-second cap on each wait is only the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from cdc import db
from cdc.sequencer import Sequencer
from cdc.settings import Settings


@contextlib.asynccontextmanager
async def running(seq: Sequencer) -> AsyncIterator[Sequencer]:
    """Run `seq` as a task while the block runs, once it leads; cancel it after."""
    task = asyncio.create_task(seq.run())
    try:
        await asyncio.wait_for(seq.leading.wait(), 10)
        yield seq
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def counts(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """Rows of pgtide.sync_log and of pgtide.sync_order."""
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM pgtide.sync_log), (SELECT count(*) FROM pgtide.sync_order)"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def wait_sequenced(url: str, n: int, timeout: float = 20) -> None:
    """Wait, woken by the per-batch NOTIFY, until pgtide.sync_order has `n` rows."""
    async with await db.aconnect(url) as conn:
        await conn.execute("LISTEN pgtide_sequenced")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (await counts(conn))[1] < n:
            remaining = deadline - loop.time()
            assert remaining > 0, f"only {(await counts(conn))[1]} of {n} sequenced"
            async for _ in conn.notifies(timeout=min(remaining, 1.0), stop_after=1):
                pass


def wait_until_sequenced(url: str, timeout: float) -> None:
    """Block until every logged change has a seq (another process sequences them)."""
    deadline = time.monotonic() + timeout
    with db.connect(url) as conn:
        conn.execute("LISTEN pgtide_sequenced")
        while True:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pgtide.sync_log), "
                "(SELECT count(*) FROM pgtide.sync_order)"
            ).fetchone()
            assert row is not None
            if row[0] == row[1]:
                return
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"not sequenced in time: {row[1]} of {row[0]}"
            for _ in conn.notifies(timeout=min(remaining, 1.0), stop_after=1):
                pass


def sequence_all(url: str, batch_rows: int = 25) -> None:
    """Run a sequencer until every committed change is sequenced (small batches: many seals)."""

    async def go() -> None:
        async with running(Sequencer(url, Settings(batch_rows=batch_rows))):
            with db.connect(url) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pgtide.sync_log l "
                    "WHERE pg_xact_status(l.txid) = 'committed'"
                ).fetchone()
            assert row is not None
            await wait_sequenced(url, int(row[0]))

    asyncio.run(asyncio.wait_for(go(), 60))
