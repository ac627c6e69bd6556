"""The sequencer in process: long transactions, the doorbell, backlogs, stale leaders."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
import pytest

from cdc import db, reader
from cdc.cursor import Cursor
from cdc.sequencer import LostLeadership, Mode, Sequencer
from cdc.settings import Settings
from tests.sequencing import counts, running, wait_sequenced

T = TypeVar("T")

SETUP = b"""
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT pgtide.track_v1('t');
"""


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(coro_fn(), timeout=60))  # type: ignore[arg-type]


@pytest.fixture
def url(db_url: str) -> str:
    with db.connect(db_url) as conn:
        conn.execute(SETUP)
    return db_url


def test_long_open_transaction_does_not_hold_back_others(url: str) -> None:
    async def scenario() -> None:
        async with running(Sequencer(url, Settings())):
            long = await db.aconnect(url, autocommit=False)
            await long.execute("INSERT INTO t VALUES (1, 'long')")  # stays open
            async with await db.aconnect(url) as w:
                await w.execute("INSERT INTO t VALUES (2, 'a')")
                await w.execute("INSERT INTO t VALUES (3, 'b')")
            await wait_sequenced(url, 2)
            await long.commit()
            await wait_sequenced(url, 3)
            await long.close()
        with db.connect(url) as conn:
            changes = reader.read_after(conn, Cursor(0))
        assert [(c.seq, c.pk) for c in changes] == [(1, {"id": 2}), (2, {"id": 3}), (3, {"id": 1})]

    run(scenario)


def test_doorbell_rings_far_less_than_commits_and_sleep_returns(url: str) -> None:
    commits_per_writer, writers = 150, 4

    async def writer(wid: int) -> None:
        async with await db.aconnect(url) as w:
            for i in range(commits_per_writer):
                await w.execute("INSERT INTO t VALUES (%s, 'x')", (wid * 10_000 + i,))

    async def scenario() -> None:
        # A 30 s safety poll: only the doorbell can explain a prompt wake-up below.
        seq = Sequencer(url, Settings(safety_poll_s=30))
        async with running(seq), await db.aconnect(url) as bell:
            await bell.execute("LISTEN pgtide_doorbell")
            await asyncio.wait_for(seq.asleep.wait(), 10)
            await asyncio.gather(*(writer(i) for i in range(writers)))
            commits = commits_per_writer * writers
            await wait_sequenced(url, commits)
            rings = 0
            async for _ in bell.notifies(timeout=0.3):
                rings += 1
            assert rings < commits / 10, f"{rings} rings for {commits} commits"

            # Writes stopped: the sequencer goes back to sleep...
            await asyncio.wait_for(seq.asleep.wait(), 10)
            assert seq.mode is Mode.ASLEEP
            rings_before, polls_before = seq.stats.rings, seq.stats.safety_polls
            # ...and the next single write wakes it through the doorbell.
            async with await db.aconnect(url) as w:
                await w.execute("INSERT INTO t VALUES (-1, 'lone')")
            await wait_sequenced(url, commits + 1, timeout=10)
            assert seq.stats.rings > rings_before
            assert seq.stats.safety_polls == polls_before

    run(scenario)


def test_backlog_is_sequenced_in_chunks_of_whole_transactions(url: str) -> None:
    with db.connect(url, autocommit=False) as conn:
        for txn in range(30):
            for i in range(7):
                conn.execute("INSERT INTO t VALUES (%s, 'b')", (txn * 100 + i,))
            conn.commit()
        conn.execute(
            "INSERT INTO t SELECT 10000 + g, 'big' FROM generate_series(1, 50) g"
        )  # one transaction larger than the batch budget
        conn.commit()

    async def scenario() -> Sequencer:
        seq = Sequencer(url, Settings(batch_rows=20))
        async with running(seq):
            await wait_sequenced(url, 260)
        return seq

    seq = run(scenario)
    assert seq.stats.batches >= 11
    with db.connect(url) as conn:
        rows = conn.execute(
            "SELECT o.seq, l.id, l.txid FROM pgtide.sync_order o "
            "JOIN pgtide.sync_log l ON l.id = o.log_id ORDER BY o.seq"
        ).fetchall()
    assert [r[0] for r in rows] == list(range(1, 261))
    assert [r[1] for r in rows] == sorted(r[1] for r in rows)  # sequential txns: id order
    big = [r for r in rows if r[0] > 210]
    assert len({r[2] for r in big}) == 1  # the big transaction was taken whole


def test_stale_leader_commits_nothing(url: str) -> None:
    async def scenario() -> None:
        stale = Sequencer(url, Settings())
        async with await db.aconnect(url) as conn:
            await stale._load_state(conn)  # the state before anything is sequenced
            await conn.execute("INSERT INTO t VALUES (1, 'a')")
            async with running(Sequencer(url, Settings())):
                await wait_sequenced(url, 1)
                await conn.execute("INSERT INTO t VALUES (2, 'b')")
                await wait_sequenced(url, 2)
            before = await counts(conn)
            # The stale sequencer believes nothing was sequenced yet: it must fail.
            with pytest.raises((psycopg.errors.UniqueViolation, LostLeadership)):
                await stale.discover(conn)
            assert await counts(conn) == before == (2, 2)

    run(scenario)


def test_second_sequencer_takes_over_when_the_leader_dies(url: str) -> None:
    async def scenario() -> None:
        a, b = Sequencer(url, Settings()), Sequencer(url, Settings(), lead_retry_s=0.1)
        task_a = asyncio.create_task(a.run())
        await asyncio.wait_for(a.leading.wait(), 10)
        task_b = asyncio.create_task(b.run())
        # One leader at a time (a bounded negative check).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(b.leading.wait(), 1.0)
        task_a.cancel()  # the leader goes away; its connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await task_a
        await asyncio.wait_for(b.leading.wait(), 10)
        async with await db.aconnect(url) as w:
            await w.execute("INSERT INTO t VALUES (1, 'after')")
        await wait_sequenced(url, 1)  # a is gone: only b can have sequenced it
        assert task_a.done() and b.is_leader and not a.is_leader
        task_b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task_b

    run(scenario)


def test_only_this_databases_open_transactions_keep_the_sequencer_awake(
    url: str, server_url: str
) -> None:
    async def scenario() -> None:
        seq = Sequencer(url, Settings())
        # Another database's transaction holds an xid for the whole test: xids are
        # cluster-wide, so it sits in every snapshot's xip.
        async with await db.aconnect(server_url, autocommit=False) as other, running(seq):
            await other.execute("SELECT pg_current_xact_id()")
            async with await db.aconnect(url) as w:
                await w.execute("INSERT INTO t VALUES (1, 'a')")
            await wait_sequenced(url, 1)
            await asyncio.wait_for(seq.asleep.wait(), 10)  # not held awake by `other`

            # This database's open writer does keep it from sleeping, then commits.
            local = await db.aconnect(url, autocommit=False)
            await local.execute("INSERT INTO t VALUES (2, 'b')")
            async with await db.aconnect(url) as w:
                await w.execute("INSERT INTO t VALUES (3, 'c')")
            await wait_sequenced(url, 2)
            with pytest.raises(TimeoutError):  # a bounded negative check
                await asyncio.wait_for(seq.asleep.wait(), 1.5)
            assert seq.mode is Mode.DRAINING
            await local.commit()
            await wait_sequenced(url, 3)
            await local.close()
            await asyncio.wait_for(seq.asleep.wait(), 10)
            await other.rollback()

    run(scenario)
