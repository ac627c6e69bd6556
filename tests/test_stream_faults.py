"""The change stream under faults, end to end: real PostgreSQL, real `pgtide serve`
processes, real SSE clients.

Every test ends the same way: a marker message (`pgtide.publish('fin', ...)`,
which every subscriber selects with `topics=fin`) is committed after the
writers stop; each subscriber reads up to it, and what it received must be
exactly the `pgtide.sync_order` ⋈ `pgtide.sync_log` rows up to the marker that match its
filter: every change once, in seq order, none missing, none extra. Replicas
built from the events (checking each UPDATE/DELETE against the current row)
must equal the tables.

Faults: out-of-order commits on hot rows and a long open transaction; the
listener's and sequencer's connections terminated over and over; PostgreSQL
stopped and started; two servers, the sequencing one SIGKILLed; a subscriber
that never reads.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg.pq import TransactionStatus

from cdc import db
from tests.conftest import RestartPostgres
from tests.faults import (
    ALL,
    FAST,
    LOW_IDS,
    Sub,
    assert_exactly,
    assert_replica,
    assert_rows_in_true_order,
    check,
    every,
    is_marker,
    logged,
    low_ids,
    metric,
    publish_marker,
)
from tests.live import Server, problem_of
from tests.workload import Workload, Writers

pytestmark = pytest.mark.slow

WRITERS = 6
TXNS = 30  # per writer and phase (test_ordering runs 45)


def run_writers(work: Workload, count: int, txns: int, first: int = 0) -> list[threading.Thread]:
    """Start `count` writer threads, each running `txns` of the ordering test's transactions."""

    def writer(wid: int) -> None:
        rng = random.Random(work.seed * 1000 + wid)
        try:
            with psycopg.connect(work.url) as conn:
                for _ in range(txns):
                    work.transaction(conn, rng, work.next_label())
        except BaseException as exc:  # surfaced by the test
            work.errors.append(exc)

    threads = [threading.Thread(target=writer, args=(first + i,)) for i in range(count)]
    for t in threads:
        t.start()
    return threads


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers started by the test, stopped (or killed) at its end whatever happens."""
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


def serve(servers: list[Server], url: str, **env: str) -> Server:
    srv = Server(url, env={**FAST, **env}).start()
    servers.append(srv)
    return srv


# 1 -------------------------------------------------------------------------


def test_out_of_order_commits_and_a_long_transaction_hold_nothing_back(
    workload_db: str, sql: psycopg.Connection[Any], servers: list[Server]
) -> None:
    srv = serve(servers, workload_db)
    every_sub, low_sub = Sub(srv.base, ALL), Sub(srv.base, LOW_IDS)
    for s in (every_sub, low_sub):
        s.synced()

    # A long transaction, open from before the writers start until after the marker arrives.
    with psycopg.connect(workload_db) as long:
        long.execute("SELECT set_config('pgtide.mutation_id', 'long', true)")
        long.execute("INSERT INTO hot (id, val) VALUES (5, -1)")  # id 5: both filters see it
        work = Workload(workload_db, seed=11)
        threads = run_writers(work, WRITERS, TXNS)
        threads.append(threading.Thread(target=work.long_transaction, args=(0,)))
        threads[-1].start()
        for t in threads:
            t.join()
        assert not work.errors, work.errors

        # Committed after the long transaction began and before it ends: it must arrive now.
        publish_marker(sql, 1)
        for s in (every_sub, low_sub):
            s.marker(1)
        assert long.info.transaction_status == TransactionStatus.INTRANS
        long.commit()
    publish_marker(sql, 2)
    for s in (every_sub, low_sub):
        s.marker(2)

    check(sql, every_sub, every, "unfiltered")
    check(sql, low_sub, low_ids, "id <= 10")
    # The long transaction's change comes after the marker that was committed before it.
    for s in (every_sub, low_sub):
        seq_of = {
            ("long" if e.get("mutation_id") == "long" else e["row"]["n"]): e["seq"]
            for e in s.got
            if e.get("mutation_id") == "long" or is_marker(e)
        }
        assert seq_of[1] < seq_of["long"] < seq_of[2], s.path

    inverted = assert_rows_in_true_order(every_sub.got, "unfiltered")
    assert_rows_in_true_order(low_sub.got, "id <= 10")
    assert inverted > 0, "workload too gentle: no row had changes out of txid order"
    assert_replica(sql, every_sub.got, ["hot", "cold", "scratch"])
    assert_replica(sql, low_sub.got, ["hot", "cold"], keep=lambda row: row["id"] <= 10)
    for s in (every_sub, low_sub):
        s.close()
    print(
        f"\nout of order: {len(every_sub.got)} + {len(low_sub.got)} events, "
        f"{inverted} rows changed out of txid order, {len(work.committed)} commits"
    )


# 2 -------------------------------------------------------------------------

CHAOS_ROUNDS = 12
CHAOS_SQL = """
SELECT a.application_name, pg_terminate_backend(a.pid)
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.application_name LIKE %s
"""


def test_listener_and_sequencer_connections_killed_over_and_over(
    workload_db: str, sql: psycopg.Connection[Any], servers: list[Server]
) -> None:
    srv = serve(servers, workload_db)
    every_sub, low_sub = Sub(srv.base, ALL), Sub(srv.base, LOW_IDS)
    for s in (every_sub, low_sub):
        s.synced()

    writers = Writers(Workload(workload_db, seed=23), WRITERS)
    killed: Counter[str] = Counter()
    targets = ["pgtide-listener-%", "pgtide-sequencer-%", "pgtide-%"]
    try:
        # Chaos while the writers run: the listener's connection, the sequencer's, or both,
        # every quarter of a second (a reconnect takes 0.05 s, then 0.1 s, 0.2 s...).
        for n in range(CHAOS_ROUNDS):
            writers.stopping.wait(0.25)
            for name, done in sql.execute(CHAOS_SQL, (targets[n % 3],)).fetchall():
                if done:
                    killed[name.rsplit("-", 1)[0]] += 1
            assert all(t.is_alive() for t in writers.threads), "a writer died"
    finally:
        writers.stop()
    assert writers.failures == 0  # only pgtide's connections were cut
    assert killed["pgtide-listener"] >= 4 and killed["pgtide-sequencer"] >= 4, killed
    assert metric(srv, "pgtide_listener_reconnects") >= killed["pgtide-listener"]

    srv.wait_ready()
    publish_marker(sql, 1)
    for s in (every_sub, low_sub):
        s.marker(1)
    check(sql, every_sub, every, "unfiltered")
    check(sql, low_sub, low_ids, "id <= 10")
    assert_rows_in_true_order(every_sub.got, "unfiltered")
    assert_replica(sql, every_sub.got, ["hot", "cold", "scratch"])
    assert_replica(sql, low_sub.got, ["hot", "cold"], keep=lambda row: row["id"] <= 10)
    for s in (every_sub, low_sub):
        s.close()
    print(f"\nkills: {dict(killed)}, {len(every_sub.got)} + {len(low_sub.got)} events")


# 3 -------------------------------------------------------------------------


def test_postgres_restart_while_clients_stream_and_write(
    restart_postgres: RestartPostgres, workload_db: str, servers: list[Server]
) -> None:
    srv = serve(servers, workload_db)
    stays, cut = Sub(srv.base, ALL), Sub(srv.base, ALL)
    for s in (stays, cut):
        s.synced()
    writers = Writers(Workload(workload_db, seed=31), 4)
    try:
        for s in (stays, cut):
            s.count(100)

        def while_down() -> None:
            deadline = time.monotonic() + 20
            while httpx.get(f"{srv.base}/ready", timeout=5).status_code != 503:
                assert time.monotonic() < deadline, "/ready still 200 with PostgreSQL down"
                time.sleep(0.05)
            r = httpx.get(f"{srv.base}/events", timeout=5)
            assert r.status_code == 503 and "not connected" in problem_of(r)["detail"]
            cut.close()  # this client loses its connection during the outage

        restart_postgres(while_down)
        srv.wait_ready(30)
        assert cut.stream.last_id is not None
        resumed = Sub(srv.base, ALL, headers={"Last-Event-ID": cut.stream.last_id})
        before = len(stays.got)
        stays.count(before + 100)  # writes flow again after the restart
    finally:
        writers.stop()
    assert writers.failures > 0, "the writers did not notice the outage"

    sql = db.connect(workload_db)
    publish_marker(sql, 1)
    for s in (stays, resumed):
        s.marker(1)
    check(sql, stays, every, "connected throughout")
    upto = stays.got[-1]["seq"]
    assert_exactly(cut.got + resumed.got, [e for e in logged(sql, upto) if every(e)], "resumed")
    # Nothing logged escaped the sequencer (and so the stream): the stream is the log.
    n_log = sql.execute("SELECT count(*) FROM pgtide.sync_log").fetchone()
    assert n_log == (upto,)
    assert_rows_in_true_order(stays.got, "connected throughout")
    assert_replica(sql, stays.got, ["hot", "cold", "scratch"])
    for s in (stays, resumed):
        s.close()
    sql.close()
    print(
        f"\nrestart: {upto} events, {len(cut.got)} before the cut + {len(resumed.got)} resumed, "
        f"{writers.failures} writer transactions cut"
    )


# 4 -------------------------------------------------------------------------

LEADER_SQL = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.database =
       (SELECT oid FROM pg_database WHERE datname = current_database())
   AND a.application_name LIKE 'pgtide-sequencer-%'
"""


def leader_pid(conn: psycopg.Connection[Any]) -> int | None:
    """The OS pid of the process whose sequencer holds the leader lock, if any."""
    row = conn.execute(LEADER_SQL).fetchone()
    return int(row[0].rsplit("-", 1)[1]) if row else None


def wait_leader(conn: psycopg.Connection[Any], among: list[Server], timeout: float) -> Server:
    """Poll the lock table until one of `among` leads."""
    deadline = time.monotonic() + timeout
    while True:
        pid = leader_pid(conn)
        for srv in among:
            if srv.proc is not None and srv.proc.pid == pid:
                return srv
        assert time.monotonic() < deadline, f"no server took the leader lock (holder: {pid})"
        time.sleep(0.05)


def test_two_servers_then_the_sequencing_one_is_killed(
    workload_db: str, sql: psycopg.Connection[Any], servers: list[Server]
) -> None:
    one, two = serve(servers, workload_db), serve(servers, workload_db)
    subs = {one.port: Sub(one.base, ALL), two.port: Sub(two.base, ALL)}
    for s in subs.values():
        s.synced()
    work = Workload(workload_db, seed=47)
    for t in run_writers(work, WRITERS, TXNS // 2):
        t.join()
    publish_marker(sql, 1)
    for s in subs.values():
        s.marker(1)
    check(sql, subs[one.port], every, "server one")
    # Both servers serve the same sequence: same seqs, same data, byte for byte in JSON.
    assert subs[one.port].got == subs[two.port].got

    leader = wait_leader(sql, [one, two], timeout=10)
    survivor = two if leader is one else one
    writers = Writers(work, WRITERS, first=WRITERS)
    try:
        subs[survivor.port].count(len(subs[survivor.port].got) + 50)  # writes are flowing
        leader.kill()
        killed_at = time.monotonic()
        assert wait_leader(sql, [survivor], timeout=10) is survivor
        takeover = time.monotonic() - killed_at
        orphan = subs[leader.port]
        orphan.until_cut()
        assert orphan.stream.last_id is not None
        resumed = Sub(survivor.base, ALL, headers={"Last-Event-ID": orphan.stream.last_id})
        # Writes keep flowing to both subscribers under the new leader.
        for s in (subs[survivor.port], resumed):
            s.count(len(s.got) + 50)
    finally:
        writers.stop()

    publish_marker(sql, 2)
    subs[survivor.port].marker(2, timeout=10)
    resumed.marker(2, timeout=10)
    check(sql, subs[survivor.port], every, "survivor's subscriber")
    upto = subs[survivor.port].got[-1]["seq"]
    expected = [e for e in logged(sql, upto) if every(e)]
    assert_exactly(orphan.got + resumed.got, expected, "killed server's client, resumed")
    assert subs[survivor.port].got == orphan.got + resumed.got
    assert_replica(sql, subs[survivor.port].got, ["hot", "cold", "scratch"])
    assert takeover < 5, f"the survivor took {takeover:.1f}s to lead"
    for s in (subs[survivor.port], resumed):
        s.close()
    print(f"\ntakeover: {takeover:.2f}s, {upto} events, {len(orphan.got)} before the kill")


# 5 -------------------------------------------------------------------------

BLOB = 256 * 1024  # characters per row: compressed on disk, full size on the wire
BLOBS = 840  # 210 MiB of events
WINDOW = 6  # rows the well-behaved subscriber may lag behind the writer (1.5 MiB)
QUEUE_BOUND = 4 * 1024 * 1024
MiB = 1024 * 1024


def test_a_subscriber_that_stops_reading_is_closed_and_memory_stays_flat(
    workload_db: str, sql: psycopg.Connection[Any], servers: list[Server]
) -> None:
    sql.execute("CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL)")
    sql.execute("SELECT pgtide.track_v1('blobs')")
    srv = serve(servers, workload_db, PGTIDE_SUBSCRIBER_MAX_BYTES=str(QUEUE_BOUND))
    good = Sub(srv.base, "/events?tables=blobs")
    good.synced()

    # The slow one: a raw socket with a small receive buffer; it reads up to `synced`
    # (so it has joined the feed), then nothing.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    slow.settimeout(10)
    slow.connect(("127.0.0.1", srv.port))
    slow.sendall(
        f"GET /events?tables=blobs HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
    )
    head = b""
    while b"event: synced" not in head:
        data = slow.recv(65536)
        assert data, "the slow subscriber's stream ended before synced"
        head += data
    assert head.startswith(b"HTTP/1.1 200")

    def write(*ids: int) -> None:
        with sql.transaction():
            for i in ids:
                sql.execute(
                    "INSERT INTO blobs VALUES (%s, repeat(md5(%s::text), %s))", (i, i, BLOB // 32)
                )

    received: list[int] = []

    def receive_one() -> None:
        ev = good._next(time.monotonic() + 30, f"blob {len(received) + 1}")
        if ev.event == "message":
            e = good.got.pop()  # keep only ids: the test process must not hold 200 MiB either
            assert len(e["row"]["body"]) == BLOB
            received.append(e["row"]["id"])

    tail = bytearray()
    read_at: list[int] = []  # rows written when the slow socket was read again

    def drain_slow() -> None:
        """Start reading the slow socket: a bounded rest, then EOF."""
        read_at.append(len(received))
        while data := slow.recv(1024 * 1024):
            tail.extend(data)
            # A queue and a batch being written when it overflowed, plus the kernel's buffers.
            assert len(tail) < 2 * QUEUE_BOUND + big * BLOB + 8 * MiB, "the slow one is still fed"
        slow.close()

    # Warm up (first allocations), then measure from there. The first transaction is
    # larger than the queue bound: one big batch must not cut off a subscriber that keeps up.
    big = QUEUE_BOUND // BLOB + 8
    # The server gives up on a send blocked for 30 s (api/stream.py): read the slow
    # socket well before, even if the writing is not over.
    read_slow_by = time.monotonic() + 20
    write(*range(1, big + 1))
    for i in range(big + 1, big + 11):
        write(i)
    while len(received) < big + 10:
        receive_one()
    assert srv.proc is not None
    proc = psutil.Process(srv.proc.pid)
    base_rss = peak_rss = proc.memory_info().rss
    for i in range(big + 11, BLOBS + 1):
        write(i)
        # Flow control for the well-behaved subscriber only: it never lags by more
        # than WINDOW rows, far below its queue bound.
        while i - len(received) > WINDOW:
            receive_one()
        if i % 20 == 0:
            peak_rss = max(peak_rss, proc.memory_info().rss)
            if slow.fileno() != -1 and time.monotonic() > read_slow_by:
                assert metric(srv, "pgtide_subscriber_drops") == 1, "slow one not cut in time"
                drain_slow()
    while len(received) < BLOBS:
        receive_one()
    peak_rss = max(peak_rss, proc.memory_info().rss)
    assert received == list(range(1, BLOBS + 1))
    written = BLOBS * BLOB
    assert written >= 200 * MiB
    assert peak_rss < base_rss + 100 * MiB, (
        f"server RSS grew from {base_rss / MiB:.0f} to {peak_rss / MiB:.0f} MiB"
    )

    # The slow subscriber was cut off (and only it): what it can still read is bounded,
    # then EOF, and the last thing it reads tells it to come back.
    assert metric(srv, "pgtide_subscriber_drops") == 1
    if slow.fileno() != -1:  # not read yet
        drain_slow()
    assert re.search(rb"^retry: \d+\r?$", bytes(tail[-4096:]), re.M), tail[-300:]
    assert tail.endswith(b"0\r\n\r\n"), "the chunked response did not end"
    # The server is still healthy and the good subscriber still live.
    write(BLOBS + 1)
    receive_one()
    assert received[-1] == BLOBS + 1
    assert metric(srv, "pgtide_subscribers") == 1 and metric(srv, "pgtide_subscriber_drops") == 1
    good.close()
    print(
        f"\nslow subscriber: {(len(head) + len(tail)) / MiB:.1f} MiB read of "
        f"{written / MiB:.0f} MiB written (read again after {read_at[0] * BLOB / MiB:.0f}); "
        f"server RSS {base_rss / MiB:.0f} -> "
        f"peak {peak_rss / MiB:.0f} MiB"
    )
