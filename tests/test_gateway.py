"""Gateways (`pgtide serve` with PGTIDE_BROKER_URL) fed by relays through a real NATS
JetStream, end to end: real PostgreSQL, real nats-server, real processes, real SSE clients.

Every test ends as tests/test_stream_faults.py's do: after a marker message each
client must have received exactly the logged changes that match its filter, once,
in seq order, and replicas built from its events must equal the tables.
"""

from __future__ import annotations

import queue
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.broker import offset_of
from tests.faults import (
    ALL,
    FAST,
    LOW_IDS,
    Sub,
    assert_exactly,
    assert_replica,
    check,
    every,
    logged,
    low_ids,
    publish_marker,
)
from tests.live import Server
from tests.natsserver import (
    NatsServer,
    RelayProcess,
    broker_env,
    gateway,
    running_nats,
    stream_info,
    wait_for,
)
from tests.workload import Workload, Writers

pytestmark = pytest.mark.slow


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    yield from running_nats(tmp_path)


@pytest.fixture
def procs() -> Iterator[list[Server | RelayProcess]]:
    """Relays and servers started by the test, stopped whatever happens."""
    started: list[Server | RelayProcess] = []
    yield started
    for p in started:
        p.stop()


def start_relay(procs: list[Any], url: str, nats: NatsServer) -> RelayProcess:
    r = RelayProcess(url, broker_env(nats, **FAST)).start()
    procs.append(r)
    return r


def start_gateway(procs: list[Any], url: str, nats: NatsServer, name: str = "gw") -> Server:
    # The gateway's connections carry its name, so the test can watch its statements.
    srv = gateway(f"{url} application_name={name}", nats, **FAST).start()
    procs.append(srv)
    return srv


def start_plain(procs: list[Any], url: str) -> Server:
    srv = Server(url, env=FAST).start()
    procs.append(srv)
    return srv


def stream_exists(nats: NatsServer) -> bool:
    try:
        return offset_of(stream_info(nats.url).config.description) is not None
    except Exception:
        return False


def publishing_relay(conn: psycopg.Connection[Any], relays: list[RelayProcess]) -> RelayProcess:
    """The relay holding the relay lock."""
    from cdc.relay import RELAY_LOCK_KEY

    def holder() -> str | None:
        row = conn.execute(
            """SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid
                      FROM pg_database WHERE datname = current_database())
                  AND ((l.classid::bigint << 32) | l.objid::bigint) = %s""",
            (RELAY_LOCK_KEY,),
        ).fetchone()
        return None if row is None else str(row[0])

    wait_for(lambda: holder() is not None, "a relay to take the relay lock")
    name = holder()
    return next(r for r in relays if name == f"pgtide-relay-{r.pid}")


class RawSub(Sub):
    """A subscriber that also keeps each change event's `id:` and `data:` as received."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(base, path, headers)
        self.raw: list[tuple[str, str]] = []

    def _next(self, deadline: float, what: str) -> Any:
        ev = super()._next(deadline, what)
        if ev.event == "message":
            self.raw.append((ev.id, ev.data))
        return ev


def resume(sub: RawSub, base: str) -> RawSub:
    """The client reconnects to `base` with its Last-Event-ID (EventSource does so)."""
    last = sub.stream.last_id
    assert last is not None
    again = RawSub(base, sub.path, headers={"Last-Event-ID": last})
    again.got, again.raw = sub.got, sub.raw  # one client: before, then what comes now
    return again


def check_after(sql: psycopg.Connection[Any], sub: Sub, after: int) -> None:
    """`sub` received exactly the logged changes after `after` (unfiltered) up to its marker."""
    upto = sub.got[-1]["seq"]
    expected = [e for e in logged(sql, upto) if every(e) and e["seq"] > after]
    assert_exactly(sub.got, expected, f"{sub.path} after {after}")


def statements(conn: psycopg.Connection[Any], name: str) -> set[tuple[int, Any]]:
    """(backend, start of its last statement) of every connection of the named process."""
    rows = conn.execute(
        "SELECT pid, query_start FROM pg_stat_activity WHERE application_name = %s", (name,)
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


# 1 -------------------------------------------------------------------------


def test_exactly_once_through_relay_kills_takeover_nats_restart_and_gateway_kill(
    workload_db: str, sql: psycopg.Connection[Any], nats: NatsServer, procs: list[Any]
) -> None:
    relays = [start_relay(procs, workload_db, nats) for _ in range(2)]
    wait_for(lambda: stream_exists(nats), "the stream")
    g1 = start_gateway(procs, workload_db, nats, "gw1")
    g2 = start_gateway(procs, workload_db, nats, "gw2")
    subs = {"g1-all": RawSub(g1.base, ALL), "g1-low": RawSub(g1.base, LOW_IDS),
            "g2-all": RawSub(g2.base, ALL)}  # fmt: skip
    for s in subs.values():
        s.synced()
    writers = Writers(Workload(workload_db, seed=41), 4)
    try:
        progress = subs["g2-all"]

        def moves(n: int = 80) -> None:
            """Wait until the feed has carried `n` more changes to a gateway client."""
            progress.count(len(progress.got) + n, timeout=60)

        moves()
        # The publishing relay is SIGKILLed: the other takes over (leadership changes).
        leader = publishing_relay(sql, relays)
        leader.kill()
        moves()
        relays.remove(leader)
        relays.append(start_relay(procs, workload_db, nats))  # back, standing by
        moves()
        # Again, the new leader: then the restarted one leads.
        leader = publishing_relay(sql, relays)
        leader.kill()
        moves()
        # NATS restarts under the relays and gateways.
        nats.restart()
        moves()
        # A gateway is SIGKILLed; its clients resume on the other by Last-Event-ID.
        g1.kill()
        for name in ("g1-all", "g1-low"):
            subs[name].until_cut()
            subs[name] = resume(subs[name], g2.base)
        moves()
    finally:
        writers.stop()
    publish_marker(sql, 1)
    for s in subs.values():
        s.marker(1, timeout=60)
    check(sql, subs["g1-all"], every, "g1 then g2, unfiltered")
    check(sql, subs["g1-low"], low_ids, "g1 then g2, id <= 10")
    check(sql, subs["g2-all"], every, "g2, unfiltered")
    assert_replica(sql, subs["g2-all"].got, ["hot", "cold", "scratch"])
    assert_replica(sql, subs["g1-all"].got, ["hot", "cold", "scratch"])
    assert_replica(sql, subs["g1-low"].got, ["hot", "cold"], keep=lambda row: row["id"] <= 10)
    print(
        f"\nexactly once through faults: {len(subs['g2-all'].got)} events to g2-all, "
        f"{len(subs['g1-all'].got)} to g1-all (then g2), {writers.failures} writer failures"
    )
    for s in subs.values():
        s.close()


# 2 -------------------------------------------------------------------------


def test_gateways_follow_nats_not_postgres_and_issue_no_statements_to_stream(
    workload_db: str, sql: psycopg.Connection[Any], nats: NatsServer, procs: list[Any]
) -> None:
    relay = start_relay(procs, workload_db, nats)
    wait_for(lambda: stream_exists(nats), "the stream")
    gw = start_gateway(procs, workload_db, nats, "gw")
    plain = start_plain(procs, workload_db)
    on_gw, on_plain = RawSub(gw.base, ALL), RawSub(plain.base, ALL)
    for s in (on_gw, on_plain):
        s.synced()
    before = statements(sql, "gw")
    assert before, "the gateway's connections are not named: the check would prove nothing"

    work = Workload(workload_db, seed=5)
    write(workload_db, work, 20)
    publish_marker(sql, 1)
    on_gw.marker(1)
    on_plain.marker(1)
    # Live streaming through a gateway: not one statement on its connections.
    assert statements(sql, "gw") == before

    relay.stop()
    write(workload_db, work, 20)
    # A plain server runs its own sequencer and listener: it sees the change.
    publish_marker(sql, 2)
    on_plain.marker(2)
    # The gateway follows NATS: without a relay nothing new reaches its clients.
    with pytest.raises(queue.Empty):
        on_gw.stream.events.get(timeout=1.0)
    assert statements(sql, "gw") == before

    start_relay(procs, workload_db, nats)
    on_gw.marker(2)
    check(sql, on_gw, every, "gateway")
    check(sql, on_plain, every, "plain server")
    # Byte for byte the same events from a gateway and from a plain server.
    assert on_gw.raw == on_plain.raw

    # A client moves between them with its Last-Event-ID and misses nothing.
    publish_marker(sql, 3)
    on_gw.marker(3)
    moved = resume(on_gw, plain.base)
    publish_marker(sql, 4)
    moved.marker(4)
    back = resume(moved, gw.base)
    publish_marker(sql, 5)
    back.marker(5)
    check(sql, back, every, "gateway, plain server, gateway")
    for s in (on_plain, on_gw, moved, back):
        s.close()


def write(url: str, work: Workload, n: int) -> None:
    """`n` of the ordering test's transactions (some roll back), one after another."""
    rng = random.Random(work.seed)
    with psycopg.connect(url) as conn:
        for _ in range(n):
            work.transaction(conn, rng, work.next_label())


# 3 -------------------------------------------------------------------------


def test_recent_cursors_catch_up_from_the_stream_and_old_ones_from_the_log(
    workload_db: str, sql: psycopg.Connection[Any], nats: NatsServer, procs: list[Any]
) -> None:
    plain = start_plain(procs, workload_db)  # sequences the changes before the stream exists
    work = Workload(workload_db, seed=9)
    write(workload_db, work, 15)
    publish_marker(sql, 1)
    RawSub(plain.base, ALL).marker(1)
    start_relay(procs, workload_db, nats)
    wait_for(lambda: stream_exists(nats), "the stream")
    start = offset_of(stream_info(nats.url).config.description)
    assert start is not None and start > 0
    gw = start_gateway(procs, workload_db, nats, "gw")
    warm = RawSub(gw.base, ALL)  # the first stream loads the catalog (one statement, once)
    warm.synced()
    write(workload_db, work, 15)
    publish_marker(sql, 2)
    warm.marker(2)

    before = statements(sql, "gw")
    assert before
    recent = RawSub(gw.base, ALL, headers={"Last-Event-ID": str(start + 3)})
    recent.marker(2)
    assert recent.got[0]["seq"] == start + 4
    assert statements(sql, "gw") == before, "a catch-up within the stream read the log"

    old = RawSub(gw.base, ALL.replace("since=earliest", "since=1"))
    old.marker(2)
    assert old.got[0]["seq"] == 2
    check_after(sql, recent, start + 3)
    check_after(sql, old, 1)
    reference = RawSub(plain.base, ALL.replace("since=earliest", "since=1"))
    reference.marker(2)
    assert old.raw == reference.raw
    for s in (warm, recent, old, reference):
        s.close()
