"""pgtide_client.subscribe and Replica against a real `pgtide serve`, through real faults.

Every scenario ends the same way: the replica equals the rows of the table that
pass the filter, and no change was yielded twice (the seqs strictly increase).
The subscription filters on `k=eq.in` while the writes move rows in and out of
that filter, so the replica also depends on the stream's `"left": true`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc import db
from cdc.retention import run_retention
from pgtide_client import (
    Change,
    Event,
    Reconnecting,
    Replica,
    Reset,
    SnapshotStarted,
    Synced,
    subscribe,
)
from pgtide_client.replica import pk_key
from tests.faults import metric
from tests.live import Server
from tests.proxy import Proxy

FILTER = {"k": "eq.in"}


@pytest.fixture
def url(db_url: str) -> str:
    """Table t, tracked, with 40 rows: half of them pass the filter."""
    with db.connect(db_url) as conn:
        conn.execute(b"CREATE TABLE t (id int PRIMARY KEY, k text NOT NULL, v int, pad text);"
                     b" SELECT pgtide.track_v1('t')")  # fmt: skip
        conn.execute("INSERT INTO t SELECT g, CASE WHEN g % 2 = 0 THEN 'in' ELSE 'out' END, g, ''"
                     " FROM generate_series(1, 40) g")  # fmt: skip
    return db_url


@pytest.fixture
def sql(url: str) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(url) as conn:
        yield conn


class Follow:
    """A subscription read by the test: the events so far, and checks as they come."""

    def __init__(self, events: Iterator[Event]) -> None:
        self.events = events
        self.seen: list[Event] = []
        self.seqs: list[int] = []

    def until(self, done: Callable[[Event], bool]) -> list[Event]:
        got: list[Event] = []
        for ev in self.events:
            got.append(ev)
            self.seen.append(ev)
            if isinstance(ev, Change) and ev.seq is not None:
                assert not self.seqs or ev.seq > self.seqs[-1], f"seq {ev.seq} after {self.seqs}"
                self.seqs.append(ev.seq)
            if done(ev):
                return got
        raise AssertionError("the subscription ended")

    def synced(self) -> list[Event]:
        return self.until(lambda ev: isinstance(ev, Synced))

    def row(self, pk: int) -> list[Event]:
        """Until the change of row `pk` (a sentinel written last) arrives."""
        return self.until(lambda ev: isinstance(ev, Change) and (ev.pk or {}).get("id") == pk)

    def close(self) -> None:
        close = getattr(self.events, "close", None)
        if close is not None:
            close()


def churn(sql: psycopg.Connection[Any], seed: int, n: int = 40) -> None:
    """Inserts, updates that move rows into and out of the filter, deletes: each its own tx."""
    rnd = random.Random(seed)
    for _ in range(n):
        row = rnd.randint(1, 60)
        k = rnd.choice(["in", "out"])
        match rnd.randint(0, 3):
            case 0:
                sql.execute("INSERT INTO t VALUES (%s, %s, 0, '') ON CONFLICT (id) DO UPDATE"
                            " SET k = excluded.k", (row, k))  # fmt: skip
            case 1:
                sql.execute("UPDATE t SET k = %s, v = v + 1 WHERE id = %s", (k, row))
            case 2:
                sql.execute("UPDATE t SET v = v + 1 WHERE id = %s", (row,))
            case _:
                sql.execute("DELETE FROM t WHERE id = %s", (row,))


def sentinel(sql: psycopg.Connection[Any], pk: int) -> None:
    sql.execute("INSERT INTO t VALUES (%s, 'in', 0, 'end')", (pk,))


def expected(sql: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    rows = sql.execute("SELECT to_jsonb(t) FROM t WHERE k = 'in'").fetchall()
    return {pk_key({"id": r[0]["id"]}): r[0] for r in rows}


def held(replica: Replica) -> dict[str, dict[str, Any]]:
    return {pk_key({"id": r["id"]}): r for r in replica.rows("t")}


def matching_seqs(sql: psycopg.Connection[Any], after: int) -> list[int]:
    """The seqs of every change to t after `after` that the filter selects."""
    rows = sql.execute(
        "SELECT o.seq FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id"
        " WHERE l.table_name = 't' AND o.seq > %s"
        " AND (l.new_row ->> 'k' = 'in' OR l.old_row ->> 'k' = 'in') ORDER BY o.seq",
        (after,),
    ).fetchall()
    return [int(r[0]) for r in rows]


def test_a_server_killed_and_restarted_mid_stream_loses_and_repeats_nothing(
    url: str, sql: psycopg.Connection[Any]
) -> None:
    srv = Server(url).start()
    replica = Replica()
    f = Follow(subscribe(srv.base, tables="t", filters=FILTER, snapshot=True, replica=replica,
                         max_backoff=1))  # fmt: skip
    try:
        first = f.synced()
        assert isinstance(first[0], SnapshotStarted)
        assert held(replica) == expected(sql)
        start = int(replica.cursor or 0)
        churn(sql, seed=1)
        sentinel(sql, 1001)
        f.row(1001)
        srv.kill()
        churn(sql, seed=2)  # committed while no pgtide runs: sequenced after the restart
        sentinel(sql, 1002)
        srv.start()
        f.row(1002)
        assert held(replica) == expected(sql)
        assert any(isinstance(ev, Reconnecting) for ev in f.seen)
        assert f.seqs == matching_seqs(sql, start)
        # Rows left the filter on UPDATEs the stream marked, and the replica dropped them.
        assert any(isinstance(ev, Change) and ev.left for ev in f.seen)
    finally:
        f.close()
        srv.stop()


def test_connections_cut_mid_event_in_the_snapshot_and_live_resume_exactly(
    url: str, sql: psycopg.Connection[Any]
) -> None:
    srv = Server(url).start()
    proxy = Proxy(srv.port)
    replica = Replica()
    proxy.cut_at(b"\ndata: {", 3)  # inside the third snapshot row
    f = Follow(subscribe(proxy.base, tables="t", filters=FILTER, snapshot=True, replica=replica,
                         max_backoff=1))  # fmt: skip
    try:
        f.synced()
        # The cut snapshot carried no cursor: the next connection took a new one, replacing it.
        assert sum(isinstance(ev, SnapshotStarted) for ev in f.seen) == 2
        assert held(replica) == expected(sql)
        start = int(replica.cursor or 0)
        proxy.cut_at(b"\ndata: {", 5)  # after the fifth change's `id:` line, inside its data
        churn(sql, seed=3)
        sentinel(sql, 1001)
        f.row(1001)
        assert proxy.connections >= 3
        assert held(replica) == expected(sql)
        assert f.seqs == matching_seqs(sql, start)
    finally:
        f.close()
        proxy.close()
        srv.stop()


def test_a_connection_without_heartbeats_is_taken_for_dead_and_replaced(
    url: str, sql: psycopg.Connection[Any]
) -> None:
    srv = Server(url).start()
    proxy = Proxy(srv.port)
    replica = Replica()
    f = Follow(subscribe(proxy.base, tables="t", filters=FILTER, snapshot=True, replica=replica,
                         heartbeat_timeout=2, max_backoff=1))  # fmt: skip
    try:
        f.synced()
        start = int(replica.cursor or 0)
        proxy.blackhole()  # the connection stays open, but nothing comes through any more
        churn(sql, seed=4)
        sentinel(sql, 1001)
        lost = f.until(lambda ev: isinstance(ev, Reconnecting))
        assert not any(isinstance(ev, Change) for ev in lost)
        assert isinstance(lost[-1], Reconnecting) and "heartbeat" in lost[-1].reason
        f.row(1001)
        assert held(replica) == expected(sql)
        assert f.seqs == matching_seqs(sql, start)
    finally:
        f.close()
        proxy.close()
        srv.stop()


def test_a_slow_consumer_closed_by_the_server_catches_up_from_its_cursor(
    url: str, sql: psycopg.Connection[Any]
) -> None:
    srv = Server(url, env={"PGTIDE_SUBSCRIBER_MAX_BYTES": "65536"}).start()
    proxy = Proxy(srv.port)
    replica = Replica()
    f = Follow(subscribe(proxy.base, tables="t", filters=FILTER, snapshot=True, replica=replica,
                         max_backoff=1))  # fmt: skip
    try:
        f.synced()
        start = int(replica.cursor or 0)
        # ~20 MB in ten transactions while nothing is read (the proxy's small buffer and the
        # server's send buffer fill): the server's queue for this subscriber passes its bound.
        proxy.stall()
        for i in range(2000, 12000, 1000):
            sql.execute("INSERT INTO t SELECT g, 'in', g, repeat('x', 2000) FROM"
                        " generate_series(%s::int, %s::int) g", (i, i + 999))  # fmt: skip
        sql.execute("UPDATE t SET k = 'out' WHERE id BETWEEN 2000 AND 2100")
        sentinel(sql, 1001)
        deadline = time.monotonic() + 30
        while metric(srv, "pgtide_subscriber_drops") < 1:  # the server's own count, polled
            assert time.monotonic() < deadline, "the server never closed the slow subscriber"
            time.sleep(0.05)
        proxy.forward()
        f.row(1001)
        ended = [ev for ev in f.seen if isinstance(ev, Reconnecting)]
        assert ended and ended[0].reason == "the server ended the stream"
        assert held(replica) == expected(sql)
        assert f.seqs == matching_seqs(sql, start)
    finally:
        f.close()
        proxy.close()
        srv.stop()


def test_a_persisted_replica_resumes_from_its_cursor_and_starts_over_after_a_reset(
    url: str, sql: psycopg.Connection[Any], tmp_path: Path
) -> None:
    path = tmp_path / "replica.sqlite3"
    srv = Server(url).start()

    def follow(replica: Replica) -> Follow:
        return Follow(subscribe(srv.base, tables="t", filters=FILTER, snapshot=True,
                                replica=replica, max_backoff=1))  # fmt: skip

    try:
        with Replica(path) as replica:
            f = follow(replica)
            f.synced()
            churn(sql, seed=5)
            sentinel(sql, 1001)
            f.row(1001)
            f.close()
            cursor = replica.cursor
        # A restarted process: the file holds the rows at the cursor; it resumes, no snapshot.
        churn(sql, seed=6)
        with Replica(path) as replica:
            assert replica.cursor == cursor and len(replica.rows("t")) > 0
            f = follow(replica)
            got = f.synced()
            assert not any(isinstance(ev, SnapshotStarted) for ev in got)
            assert held(replica) == expected(sql)
            assert f.seqs == matching_seqs(sql, int(cursor or 0))
            f.close()
            cursor = replica.cursor
        # Stopped again; meanwhile the log moves on and retention removes all of it.
        watch = Follow(subscribe(srv.base, tables="t"))
        watch.synced()
        churn(sql, seed=7)
        sentinel(sql, 1002)
        watch.row(1002)  # sequenced (and sealed) by the server
        watch.close()
        with db.connect(url) as conn:
            assert run_retention(conn, timedelta(0)).removed_rows > 0
        with Replica(path) as replica:
            assert replica.cursor == cursor
            f = follow(replica)
            got = f.synced()
            kinds = [type(ev) for ev in got]
            assert kinds[:2] == [Reset, SnapshotStarted], kinds
            assert held(replica) == expected(sql)
            f.close()
        with Replica(path) as replica:
            assert held(replica) == expected(sql)
    finally:
        srv.stop()
