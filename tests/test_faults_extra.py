"""More faults, end to end (real PostgreSQL, real `pgtide serve`, real SSE clients):

1. A writer process SIGKILLed in the middle of a transaction (between statements,
   and inside a long statement) while other writers keep committing: nothing it
   wrote is applied or logged, the sequencer stops waiting for it, the stream
   delivers nothing from it, and the writers it blocked go on in the right order.
2. A client that disconnects at random moments (mid catch-up, mid live feed,
   right after connecting) and resumes with `Last-Event-ID` (or `since=`) while
   writers run: the concatenation of what it read is exactly the `pgtide.sync_log` rows
   matching its filter, in seq order, each once.

Both end as tests/test_stream_faults.py does: a marker message after the writers
stop, read by each subscriber; received == logged (filtered), and a replica built
from the events equals the tables.
"""

from __future__ import annotations

import json
import queue
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.faults import (
    ALL,
    FAST,
    FIN,
    LOW_IDS,
    Event,
    Sub,
    assert_exactly,
    assert_replica,
    assert_rows_in_true_order,
    every,
    is_marker,
    logged,
    low_ids,
    publish_marker,
)
from tests.live import Server, Stream
from tests.replica import table_contents, tracked_pk_columns
from tests.workload import Workload, Writers

pytestmark = pytest.mark.slow

TABLES = ["hot", "cold", "scratch"]


@pytest.fixture
def server(workload_db: str) -> Iterator[Server]:
    srv = Server(workload_db, env=FAST).start()
    yield srv
    srv.stop()


# 1 -------------------------------------------------------------------------

# The doomed writer: a separate process that opens a transaction, writes, says so on
# stdout, and then idles in its transaction or runs a long statement, until SIGKILLed.
DOOMED = r"""
import sys, time, psycopg
url, mode, tag = sys.argv[1:4]
conn = psycopg.connect(url)
conn.execute("SELECT set_config('pgtide.mutation_id', %s, true)", (tag,))
txid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
conn.execute("UPDATE hot SET val = -999, hist = hist || -999 WHERE id = 1")
conn.execute("INSERT INTO cold (id, val, note) SELECT g, -999, 'doomed' "
             "FROM generate_series(500, 505) g")
conn.execute("UPDATE cold SET val = -999, note = 'doomed' WHERE id BETWEEN 600 AND 602")
conn.execute("DELETE FROM cold WHERE id BETWEEN 603 AND 605")
conn.execute("INSERT INTO scratch (n) SELECT -999 FROM generate_series(1, 50)")
conn.execute("SELECT pgtide.publish('fin', '{\"n\": -999}')")
print(conn.info.backend_pid, txid, flush=True)
if mode == "statement":
    conn.execute("SET client_connection_check_interval = '100ms'")
    # Long enough to outlast a loaded machine's waits: it must still run when killed. The
    # sleep is in WHERE, so it runs for every row (an uncorrelated LATERAL runs once).
    conn.execute("INSERT INTO scratch (n) SELECT -999 FROM generate_series(1, 6000) g "
                 "WHERE pg_sleep(0.05) IS NOT NULL")
time.sleep(3600)  # still in the transaction until it is killed
"""


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """Poll a database condition (no event announces it) until it holds."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def passed(conn: psycopg.Connection[Any], txid: str) -> bool:
    """Whether the sequencer's durable state has moved past `txid`: below its next xid
    and not among the open ones it waits on (state written with each batch)."""
    row = conn.execute(
        "SELECT %s::xid8 < next_xid AND NOT %s::xid8 = ANY(open_xids) FROM pgtide.sync_sequencer",
        (txid, txid),
    ).fetchone()
    assert row is not None
    return bool(row[0])


def beyond(conn: psycopg.Connection[Any], txid: str) -> bool:
    """Whether a batch has committed whose snapshot came after `txid` began."""
    row = conn.execute("SELECT %s::xid8 < next_xid FROM pgtide.sync_sequencer", (txid,)).fetchone()
    assert row is not None
    return bool(row[0])


def checksum(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    cols = tracked_pk_columns(conn, TABLES)
    return {t: table_contents(conn, t, cols[t]) for t in TABLES}


def kill_doomed(
    conn: psycopg.Connection[Any], srv: Server, mode: str, tag: str, *, quiet: bool
) -> str:
    """Run a doomed writer in `mode`, SIGKILL it mid-transaction; return its txid."""
    with subprocess.Popen(
        [sys.executable, "-c", DOOMED, srv.url, mode, tag], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"the doomed writer died early ({proc.wait()})"
            backend, txid = line.split()
            # Its transaction is open and has written; the sequencer waits on it.
            state = "active" if mode == "statement" else "idle in transaction"

            def in_state() -> bool:
                return bool(conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = %s "
                    "AND backend_xid IS NOT NULL AND query NOT LIKE 'SET %%'",
                    (int(backend), state),
                ).fetchone())  # fmt: skip

            wait_for(in_state, f"the doomed writer to be {state}")
            if not quiet:
                # Other writers' batches commit past its xid, and the sequencer keeps it open.
                # The workload's writers may all be blocked on the hot row it holds: one
                # message on a topic nobody follows is a commit after it that cannot block.
                conn.execute("SELECT pgtide.publish('nudge', '{}')")
                wait_for(lambda: beyond(conn, txid), "a batch past the doomed writer's xid")
                assert not passed(conn, txid)
            assert in_state(), "the doomed writer ended before it was killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:  # a failed check: never leave it holding locks
                proc.kill()
                proc.wait()

    # PostgreSQL notices the lost client and rolls back.
    wait_for(
        lambda: (
            not conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (int(backend),)
            ).fetchone()
        ),
        "the doomed backend to end",
    )
    if not quiet:
        wait_for(lambda: passed(conn, txid), "the sequencer to move past the doomed xid")
    status = conn.execute("SELECT pg_xact_status(%s::xid8)", (txid,)).fetchone()
    assert status == ("aborted",), status
    return txid


def doomed_in_log(conn: psycopg.Connection[Any], txids: list[str], tags: list[str]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgtide.sync_log WHERE txid = ANY(%s::xid8[]) "
        "OR mutation_id = ANY(%s) OR (new_row ->> 'val') = '-999' OR (new_row ->> 'n') = '-999'",
        (txids, tags),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_writer_killed_mid_transaction_leaves_no_trace(
    workload_db: str, sql: psycopg.Connection[Any], server: Server
) -> None:
    sql.execute(
        "INSERT INTO cold (id, val, note) SELECT g, g, 'kept' FROM generate_series(600, 605) g"
    )
    every_sub, low_sub = Sub(server.base, ALL), Sub(server.base, LOW_IDS)
    for s in (every_sub, low_sub):
        s.synced()

    # Quiet: nothing else writes, so the tables and the log must be exactly as before.
    before, log_before = (
        checksum(sql),
        sql.execute("SELECT count(*) FROM pgtide.sync_log").fetchone(),
    )
    txids = [kill_doomed(sql, server, "idle", "doomed-idle", quiet=True)]
    txids.append(kill_doomed(sql, server, "statement", "doomed-statement", quiet=True))
    assert checksum(sql) == before
    assert sql.execute("SELECT count(*) FROM pgtide.sync_log").fetchone() == log_before
    publish_marker(sql, 1)
    for s in (every_sub, low_sub):
        got = len(s.got)
        s.marker(1)
        assert len(s.got) == got + 1, "the stream delivered something besides the marker"
    assert all(passed(sql, t) for t in txids)  # the marker's batch moved past them

    # Busy: writers commit all along, and block on the hot row the doomed one holds.
    writers = Writers(Workload(workload_db, seed=61), 4)
    try:
        every_sub.count(len(every_sub.got) + 30)
        txids.append(kill_doomed(sql, server, "idle", "doomed-busy", quiet=False))
        every_sub.count(len(every_sub.got) + 30)  # the blocked writers went on
        txids.append(kill_doomed(sql, server, "statement", "doomed-busy-statement", quiet=False))
        every_sub.count(len(every_sub.got) + 30)
    finally:
        writers.stop()
    assert writers.failures == 0
    publish_marker(sql, 2)
    for s in (every_sub, low_sub):
        s.marker(2)

    tags = ["doomed-idle", "doomed-statement", "doomed-busy", "doomed-busy-statement"]
    assert doomed_in_log(sql, txids, tags) == 0
    for s in (every_sub, low_sub):
        assert not [e for e in s.got if e["txid"] in txids or e.get("mutation_id") in tags]
        assert not [e for e in s.got if is_marker(e) and e["row"]["n"] == -999]
    # The doomed rows never were: 500..505 absent, 600..605 as they were (writers use 1..80).
    kept = sql.execute(
        "SELECT id, val, note FROM cold WHERE id BETWEEN 500 AND 605 ORDER BY id"
    ).fetchall()
    assert kept == [(i, i, "kept") for i in range(600, 606)]
    for s, flt, what in ((every_sub, every, "unfiltered"), (low_sub, low_ids, "id <= 10")):
        assert_exactly(s.got, [e for e in logged(sql, s.got[-1]["seq"]) if flt(e)], what)
    assert_rows_in_true_order(every_sub.got, "unfiltered")
    assert_replica(sql, every_sub.got, TABLES)
    assert_replica(sql, low_sub.got, ["hot", "cold"], keep=lambda row: row["id"] <= 10)
    for s in (every_sub, low_sub):
        s.close()
    print(f"\nkilled writers: 4 txids {txids}, {len(every_sub.got)} events, none of theirs")


# 2 -------------------------------------------------------------------------


class Resumer:
    """A client that connects, reads a random while, drops the connection and comes back."""

    def __init__(self, base: str, path: str, rng: random.Random) -> None:
        self.base, self.path, self.rng = base, path, rng
        self.got: list[Event] = []
        self.last_id: str | None = None
        self.sessions = 0
        self.by_since = 0

    def _open(self) -> Stream:
        self.sessions += 1
        if self.last_id is None:
            return Stream(self.base, self.path)
        if self.sessions % 4 == 0:  # the other way to resume: since=<cursor>
            self.by_since += 1
            return Stream(self.base, f"{self.path.replace('&since=earliest', '')}"
                                     f"&since={self.last_id}")  # fmt: skip
        return Stream(self.base, self.path, {"Last-Event-ID": self.last_id})

    def _take(self, stream: Stream, timeout: float) -> bool:
        """Read one event (False: none in time)."""
        try:
            ev = stream.next(timeout)
        except queue.Empty:
            return False
        assert ev is not None, f"{self.path}: the server ended the stream"
        if ev.id:
            self.last_id = ev.id  # what a client keeps: the last id it processed
        if ev.event == "message":
            self.got.append(json.loads(ev.data))
        return True

    def session(self) -> None:
        """One connection, cut at a random moment: after k events, or after t seconds."""
        stream = self._open()
        try:
            assert stream.status == 200, stream.status
            if self.rng.random() < 0.5:
                for _ in range(self.rng.choice([0, 1, 2, 5, 20, 80])):
                    if not self._take(stream, 5):
                        break
            else:
                until = time.monotonic() + self.rng.uniform(0, 0.3)
                while (left := until - time.monotonic()) > 0 and self._take(stream, left):
                    pass
        finally:
            stream.close()  # unread events in the socket or queue are lost, as in a crash

    def finish(self, marker: int) -> None:
        """Reconnect once more and read up to the marker."""
        stream = self._open()
        try:
            deadline = time.monotonic() + 30
            while not (self.got and is_marker(self.got[-1]) and self.got[-1]["row"]["n"] == marker):
                assert self._take(stream, max(0.01, deadline - time.monotonic())), "no marker"
        finally:
            stream.close()


def test_a_client_that_drops_at_random_and_resumes_misses_and_repeats_nothing(
    workload_db: str, sql: psycopg.Connection[Any], server: Server
) -> None:
    rng = random.Random(73)
    clients = [
        (Resumer(server.base, ALL, random.Random(rng.random())), every, "unfiltered"),
        (Resumer(server.base, LOW_IDS, random.Random(rng.random())), low_ids, "id <= 10"),
        (Resumer(server.base, f"/events?tables=cold&ops=update,delete&topics={FIN}"
                 "&since=earliest", random.Random(rng.random())),
         lambda e: is_marker(e) or (e["table"] == "cold" and e["op"] in ("UPDATE", "DELETE")),
         "cold updates and deletes"),
    ]  # fmt: skip
    writers = Writers(Workload(workload_db, seed=79), 4)
    try:
        for _ in range(12):
            for client, _, _ in clients:
                client.session()
    finally:
        writers.stop()
    publish_marker(sql, 1)
    for client, flt, what in clients:
        client.finish(1)
        upto = client.got[-1]["seq"]
        assert_exactly(client.got, [e for e in logged(sql, upto) if flt(e)], what)
        assert client.sessions == 13 and client.by_since > 0, (client.sessions, client.by_since)
    assert len(clients[0][0].got) > 300, "too few changes to say much"
    assert_rows_in_true_order(clients[0][0].got, "unfiltered")
    assert_replica(sql, clients[0][0].got, TABLES)
    assert_replica(sql, clients[1][0].got, ["hot", "cold"], keep=lambda row: row["id"] <= 10)
    print(
        "\nresumers: "
        + ", ".join(
            f"{what}: {len(c.got)} events in {c.sessions} sessions" for c, _, what in clients
        )
    )
