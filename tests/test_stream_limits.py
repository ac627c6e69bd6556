"""Streams cannot starve the server: slow readers, the per-token cap, revocation in every phase.

Over a real server with a small pool (PGTIDE_POOL_SIZE=3) and a log filled by SQL,
so that catch-up and snapshot pages exceed the sockets' buffers. A slow reader is
a raw socket with a small receive buffer that reads the response head and stops.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from cdc import db, tokens
from tests.auth import make_token
from tests.live import Server, problem_of

ROWS = 20_000  # ~1.1 KiB events each: 22 MiB of catch-up
MiB = 1024 * 1024


def fill(conn: psycopg.Connection[Any], rows: int = ROWS) -> int:
    """A tracked table of `rows` 1 KiB rows, all sequenced; the log's last seq."""
    conn.execute(
        "INSERT INTO blobs SELECT g, repeat(md5(g::text), 32) FROM generate_series(1, %s) g",
        (rows,),
    )
    deadline = time.monotonic() + 60
    while True:
        row = conn.execute("SELECT count(*) FROM pgtide.sync_order").fetchone()
        assert row is not None
        if row[0] >= rows:
            head = conn.execute("SELECT last_seq FROM pgtide.sync_sequencer").fetchone()
            assert head is not None
            return int(head[0])
        assert time.monotonic() < deadline, "the rows were not sequenced"
        time.sleep(0.05)


@pytest.fixture
def blobs_db(db_url: str) -> str:
    with db.connect(db_url) as conn:
        conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, body text NOT NULL)")
        conn.execute("SELECT pgtide.track_v1('blobs')")
    make_token(db_url, "bootstrap", "admin")
    return db_url


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


def serve(servers: list[Server], url: str, **env: str) -> Server:
    srv = Server(url, auth=True, env={"PGTIDE_POOL_SIZE": "3", **env}).start()
    servers.append(srv)
    return srv


class Raw:
    """A raw HTTP client of /events that reads only when told to."""

    def __init__(self, srv: Server, path: str, token: str, rcvbuf: int | None = 16384) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", srv.port))
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode()
        )
        self.got = bytearray()
        self.eof = False

    def status(self) -> int:
        """Read the response head and, for a stream, its first event; the status code.

        The first event (`retry:`) is sent once the stream has joined the live feed.
        """
        while b"\r\n\r\n" not in self.got:
            self.read_some()
            assert not self.eof, "no response head"
        status = int(self.got.split(b" ", 2)[1])
        while status == 200 and b"retry: " not in self.got:
            self.read_some()
            assert not self.eof, "the stream ended at once"
        return status

    def read_some(self, n: int = 65536) -> int:
        data = self.sock.recv(n)
        self.eof = not data
        self.got += data
        return len(data)

    def close(self) -> None:
        self.sock.close()


def test_slow_readers_hold_no_connection_and_the_api_answers_within_a_second(
    blobs_db: str, servers: list[Server]
) -> None:
    srv = serve(servers, blobs_db)
    with db.connect(blobs_db) as conn:
        fill(conn)
    reader = make_token(blobs_db, "slow")
    slow = [Raw(srv, "/events?tables=blobs&since=earliest", reader) for _ in range(6)]
    slow += [Raw(srv, "/events?tables=blobs&snapshot=true", reader) for _ in range(3)]
    for s in slow:
        assert s.status() == 200  # then never read again: their socket buffers fill
    admin = {"Authorization": f"Bearer {make_token(blobs_db, 'api', 'admin')}"}
    deadline = time.monotonic() + 4
    n = 0
    while time.monotonic() < deadline or n < 5:
        # A fresh token each time: a cache miss, so a lookup in the database.
        fresh = {"Authorization": f"Bearer {make_token(blobs_db, f'fresh{n}')}"}
        t0 = time.monotonic()
        r = httpx.get(f"{srv.base}/api/clients?limit=5", headers=admin, timeout=5)
        assert r.status_code == 200, r.text
        r = httpx.get(f"{srv.base}/api/branches?limit=1", headers=fresh, timeout=5)
        assert r.status_code == 200, r.text
        took = time.monotonic() - t0
        assert took < 1.0, f"the API took {took:.1f} s while slow streams were open"
        n += 1
    # No snapshot transaction is left open while its client does not read.
    with db.connect(blobs_db) as conn:
        until = time.monotonic() + 10
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            ).fetchone()
            assert row is not None
            if row[0] == 0:
                break
            assert time.monotonic() < until, f"{row[0]} transactions wait on slow clients"
            time.sleep(0.05)
    for s in slow:
        s.close()


def test_statements_of_the_api_are_cut_by_the_statement_timeout(
    blobs_db: str, servers: list[Server]
) -> None:
    srv = serve(servers, blobs_db, PGTIDE_STATEMENT_TIMEOUT_MS="300")
    admin = {"Authorization": f"Bearer {make_token(blobs_db, 'api', 'admin')}"}
    assert httpx.get(f"{srv.base}/api/clients", headers=admin, timeout=5).status_code == 200
    with db.connect(blobs_db) as conn, conn.transaction():
        conn.execute("LOCK TABLE clients IN ACCESS EXCLUSIVE MODE")
        t0 = time.monotonic()
        r = httpx.get(f"{srv.base}/api/clients", headers=admin, timeout=10)
        took = time.monotonic() - t0
    assert r.status_code == 503 and problem_of(r)["status"] == 503
    assert took < 3, f"the statement ran {took:.1f} s"
    # The listener and the sequencer have no timeout: the feed still moves.
    with db.connect(blobs_db) as conn:
        head = fill(conn, 10)
    assert head >= 10


def test_a_snapshot_longer_than_its_limit_ends_with_snapshot_timeout(
    blobs_db: str, servers: list[Server]
) -> None:
    srv = serve(servers, blobs_db, PGTIDE_SNAPSHOT_MAX_S="0.001")
    with db.connect(blobs_db) as conn:
        fill(conn)
    token = make_token(blobs_db, "snap")
    r = httpx.get(
        f"{srv.base}/events?tables=blobs&snapshot=true",
        headers={"Authorization": f"Bearer {token}"}, timeout=30,
    )  # fmt: skip
    assert r.status_code == 200
    body = r.text
    assert "event: error" in body and '"op":"SNAPSHOT"' not in body
    error = json.loads(body.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])
    assert (error["code"], error["status"]) == ("snapshot_timeout", 503)


def test_concurrent_opens_cannot_pass_the_per_token_cap(
    blobs_db: str, servers: list[Server]
) -> None:
    srv = serve(servers, blobs_db, PGTIDE_MAX_STREAMS_PER_TOKEN="5")
    with db.connect(blobs_db) as conn:
        fill(conn, 2000)
    token = make_token(blobs_db, "greedy")
    clients: list[Raw] = []
    statuses: list[int] = []
    lock = threading.Lock()
    go = threading.Barrier(20)

    def open_one() -> None:
        go.wait()
        raw = Raw(srv, "/events?tables=blobs&snapshot=true", token)
        status = raw.status()
        with lock:
            clients.append(raw)
            statuses.append(status)

    threads = [threading.Thread(target=open_one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses).count(200) <= 5, statuses
    assert statuses.count(429) >= 15, statuses
    for c in clients:
        c.close()


def test_a_stream_dropped_for_falling_behind_still_counts_and_is_revoked(
    blobs_db: str, servers: list[Server]
) -> None:
    srv = serve(
        servers, blobs_db, PGTIDE_MAX_STREAMS_PER_TOKEN="1", PGTIDE_SUBSCRIBER_MAX_BYTES="8192"
    )
    with db.connect(blobs_db) as conn:
        fill(conn)
    token = make_token(blobs_db, "behind")
    slow = Raw(srv, "/events?tables=blobs&since=earliest", token)
    assert slow.status() == 200
    with db.connect(blobs_db) as conn:  # live changes overflow its queue while it catches up
        until = time.monotonic() + 20
        i = ROWS
        while drops(srv) < 1:  # a second batch in its queue overflows it
            assert time.monotonic() < until, "the slow stream was not dropped"
            i += 1
            conn.execute("INSERT INTO blobs VALUES (%s, repeat('x', 8192))", (i,))
            time.sleep(0.05)
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.get(f"{srv.base}/events?tables=blobs", headers=auth, timeout=5)
    assert r.status_code == 429, "a dropped stream that still catches up is not counted"
    with db.connect(blobs_db) as conn:
        assert tokens.revoke(conn, "behind")
    read_to_eof(slow, within=10)
    slow.close()


def drops(srv: Server) -> float:
    text = httpx.get(f"{srv.base}/metrics", timeout=5).text
    found = re.search(r"^pgtide_subscriber_drops(?:_total)? (\S+)$", text, re.M)
    assert found, "/metrics has no pgtide_subscriber_drops"
    return float(found.group(1))


def read_to_eof(raw: Raw, within: float, rate: int | None = None) -> int:
    """Read until the server ends the connection; bytes read. Fails past `within` seconds."""
    deadline = time.monotonic() + within
    n = 0
    while not raw.eof:
        assert time.monotonic() < deadline, f"still streaming after {n / MiB:.1f} MiB"
        try:
            n += raw.read_some(rate or 1024 * 1024)
        except TimeoutError:
            continue
        if rate:
            time.sleep(0.05)  # a throttled client: `rate` bytes per 50 ms at most
    # It ends with `retry:` and the chunked terminator, or, when its client cannot take
    # the rest of the page within a second, is cut: either way it ends.
    return n


@pytest.mark.parametrize("phase", ["catch-up", "snapshot"])
def test_revoking_a_token_ends_its_streams_in_catch_up_and_snapshot(
    blobs_db: str, servers: list[Server], phase: str
) -> None:
    srv = serve(servers, blobs_db)
    with db.connect(blobs_db) as conn:
        fill(conn)
    token = make_token(blobs_db, "leaving")
    path = "since=earliest" if phase == "catch-up" else "snapshot=true"
    raw = Raw(srv, f"/events?tables=blobs&{path}", token, rcvbuf=None)
    assert raw.status() == 200
    while len(raw.got) < MiB:  # it is well into its catch-up or snapshot
        raw.read_some()
    with db.connect(blobs_db) as conn:
        assert tokens.revoke(conn, "leaving")
    # At most 2.5 MiB/s: the whole log would take 8 s more; it ends within the
    # watcher's interval, one page and the sockets' buffers.
    after = read_to_eof(raw, within=8, rate=128 * 1024)
    assert after < 12 * MiB
    assert b"synced" not in raw.got
    raw.close()
    r = httpx.get(f"{srv.base}/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
