"""`pgtide relay` against a real PostgreSQL and a real nats-server with JetStream.

What the stream must hold, whatever happened: the log's changes after the
stream's start, each once, in seq order, at stream sequence seq - offset,
carrying its seq in `Nats-Msg-Id`, on its table's (or topic's) subject, with
the SSE event's JSON as its body, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from cdc import db, reader
from cdc.broker import decode_change, offset_of
from cdc.cursor import Cursor
from cdc.events import encode_body, encode_change
from cdc.subjects import subject_of
from tests.conftest import drop_database, with_dbname
from tests.natsserver import (
    NatsServer,
    RelayProcess,
    broker_env,
    running_nats,
    stream_info,
    stream_messages,
    wait_for,
)

pytestmark = pytest.mark.slow

FAST = {"PGTIDE_RECONNECT_BASE_S": "0.05", "PGTIDE_SAFETY_POLL_S": "0.5"}
SETUP = """
CREATE TABLE items (id int PRIMARY KEY, label text, amount numeric, data jsonb);
CREATE TABLE "Odd.Name" (k text PRIMARY KEY, v double precision);
SELECT pgtide.track_v1('items'), pgtide.track_v1('"Odd.Name"');
"""


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    yield from running_nats(tmp_path)


@pytest.fixture
def url(db_url: str) -> str:
    with db.connect(db_url) as conn:
        conn.execute(SETUP.encode())
    return db_url


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for r in started:
        r.stop()


def relay(relays: list[RelayProcess], url: str, nats: NatsServer) -> RelayProcess:
    r = RelayProcess(url, broker_env(nats, **FAST)).start()
    relays.append(r)
    return r


def head(conn: psycopg.Connection[Any]) -> int:
    return int(reader.head(conn))


def sequence_now(url: str) -> None:
    """Sequence what is committed, as a sequencer would, before any relay runs."""
    from cdc.sequencer import Sequencer

    async def run() -> None:
        seq = Sequencer(url)
        async with await db.aconnect(url) as conn:
            assert await seq._try_lead(conn)
            await seq._load_state(conn)
            while (await seq.discover(conn)).rows:
                pass

    asyncio.run(run())


def sequenced(conn: psycopg.Connection[Any]) -> int:
    """Wait for the sequencer to catch up with every committed change; its head."""
    wait_for(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM pgtide.sync_log l WHERE NOT EXISTS "
                "(SELECT 1 FROM pgtide.sync_order o WHERE o.log_id = l.id)"
            ).fetchone()
            == (0,)
        ),
        "the sequencer",
    )
    return head(conn)


def relayed_through(nats: NatsServer, seq: int) -> None:
    """Wait until the stream's last message is seq `seq`."""

    def there() -> bool:
        try:
            info = stream_info(nats.url)
        except Exception:
            return False
        offset = offset_of(info.config.description)
        return offset is not None and info.state.last_seq + offset >= seq

    wait_for(there, f"the relay to publish seq {seq}")


def assert_stream_is_the_log(conn: psycopg.Connection[Any], nats: NatsServer) -> list[Any]:
    """The stream holds exactly the log after its start, as the module docstring says."""
    info = stream_info(nats.url)
    offset = offset_of(info.config.description)
    assert offset is not None
    messages = stream_messages(nats.url)
    changes = reader.read_after(conn, Cursor(info.state.first_seq + offset - 1), 1_000_000)
    assert [m["stream_seq"] + offset for m in messages] == [c.seq for c in changes]
    for m, c in zip(messages, changes, strict=True):
        assert m["headers"]["Nats-Msg-Id"] == str(c.seq)
        assert m["subject"] == subject_of("PGTIDE", c.op, c.schema_name, c.table_name)
        assert m["body"] == encode_body(c), c.seq
    return changes


def write(conn: psycopg.Connection[Any], first: int, n: int) -> None:
    for i in range(first, first + n):
        with conn.transaction():
            conn.execute("INSERT INTO items VALUES (%s, %s, %s, %s)",
                         (i, f"item {i}", i * 1.5, Jsonb({"i": i})))  # fmt: skip
            conn.execute("UPDATE items SET label = label || '!' WHERE id = %s", (i,))


def test_the_stream_holds_every_change_once_with_the_events_bytes(
    url: str, nats: NatsServer, relays: list[RelayProcess]
) -> None:
    with db.connect(url) as conn:
        write(conn, 1, 5)  # before the stream exists: not relayed
        sequence_now(url)
        start = sequenced(conn)
        relay(relays, url, nats)
        wait_for(lambda: offset_of(_description(nats)) is not None, "the stream")
        assert offset_of(_description(nats)) == start  # a new stream starts at the log's head
        write(conn, 100, 20)
        # Values that must survive the trip byte for byte, and names subjects reserve.
        conn.execute(
            """INSERT INTO items VALUES (1000, 'snow ☃ "quoted" \\ \u2028', 'NaN', %s)""",
            (Jsonb({"big": 10**30, "x": 0.1, "neg": -1e-7, "nested": [1, {"é": None}]}),),
        )
        conn.execute("""INSERT INTO "Odd.Name" VALUES ('a.b *>', 1e308), ('', -0.0)""")
        conn.execute("SELECT pgtide.publish('orders.ready *', %s)", (Jsonb({"n": 1}),))
        conn.execute("TRUNCATE items")
        last = sequenced(conn)
        relayed_through(nats, last)
        changes = assert_stream_is_the_log(conn, nats)
    assert changes[0].seq == start + 1 and changes[-1].seq == last
    for m in stream_messages(nats.url):
        c = decode_change(m["body"])
        # The SSE event a gateway sends is the body framed: the bytes a plain server sends.
        plain = next(x for x in changes if x.seq == c.seq)
        assert encode_change(c) == encode_change(plain)
        # Decoded and encoded again (a pinned stream's view does that): the same JSON.
        object.__setattr__(c, "wire", None)
        assert encode_body(c) == m["body"], c.seq
        assert json.loads(m["body"])["cursor"] == m["headers"]["Nats-Msg-Id"]


def _description(nats: NatsServer) -> str | None:
    try:
        return str(stream_info(nats.url).config.description)
    except Exception:
        return None


def test_relay_killed_and_nats_restarted_past_the_duplicate_window_repeats_nothing(
    url: str, nats: NatsServer, relays: list[RelayProcess]
) -> None:
    with db.connect(url) as conn:
        first = relay(relays, url, nats)
        wait_for(lambda: offset_of(_description(nats)) is not None, "the stream")
        _set_duplicate_window(nats, 0.2)
        write(conn, 1, 30)
        relayed_through(nats, sequenced(conn))
        first.kill()
        write(conn, 100, 30)  # committed while no relay runs
        nats.restart()  # and NATS forgets the last message id, the window long gone
        _wait_past_window(nats)
        second = relay(relays, url, nats)
        write(conn, 200, 30)
        relayed_through(nats, sequenced(conn))
        second.kill()
        _wait_past_window(nats)
        # A publish of the last change again, chained as the relay chains it, after the
        # duplicate window: the chain refuses it.
        info = stream_info(nats.url)
        last_msg = stream_messages(nats.url)[-1]
        ack = _publish(nats, last_msg["subject"], last_msg["body"], {
            "Nats-Msg-Id": last_msg["headers"]["Nats-Msg-Id"],
            "Nats-Expected-Last-Sequence": str(info.state.last_seq - 1),
        })  # fmt: skip
        assert ack["error"]["err_code"] == 10071, ack
        assert stream_info(nats.url).state.last_seq == info.state.last_seq
        relay(relays, url, nats)
        write(conn, 300, 5)
        relayed_through(nats, sequenced(conn))
        changes = assert_stream_is_the_log(conn, nats)
    assert len(changes) == 2 * (30 + 30 + 30 + 5)


def test_a_stream_of_another_database_is_refused(
    url: str, nats: NatsServer, relays: list[RelayProcess], server_url: str, template_db: str
) -> None:
    with db.connect(url) as conn:
        write(conn, 1, 3)
        sequence_now(url)
        first = relay(relays, url, nats)
        wait_for(lambda: offset_of(_description(nats)) == 6, "the stream")
        write(conn, 10, 3)
        relayed_through(nats, sequenced(conn))
        first.kill()
    before = stream_info(nats.url).state.last_seq
    assert before == 6
    # Another database (its log at seq 0) pointed at the same stream by mistake.
    other = f"pgtide_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{other}" TEMPLATE "{template_db}"')
    try:
        other_url = with_dbname(server_url, other)
        with db.connect(other_url) as conn:
            conn.execute(SETUP.encode())
            relay(relays, other_url, nats)
            write(conn, 1, 3)
            wait_for(lambda: head(conn) == 6, "the other database's sequencer")
            # Nothing is published over a stream its log does not continue (an error is
            # logged): let the relay try for a while, long enough to have published.
            _wait_past_window(nats, 1.0)
        assert stream_info(nats.url).state.last_seq == before
    finally:
        relays[-1].kill()
        drop_database(server_url, other)


def _set_duplicate_window(nats: NatsServer, seconds: float) -> None:
    async def run() -> None:
        import nats as natspy

        nc = await natspy.connect(nats.url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("PGTIDE")
            info.config.duplicate_window = seconds
            await js.update_stream(info.config)
        finally:
            await nc.close()

    asyncio.run(run())


def _wait_past_window(nats: NatsServer, seconds: float = 0.5) -> None:
    """Let the (short) duplicate window pass: time itself is what is tested here."""
    import time

    time.sleep(seconds)


def _publish(nats: NatsServer, subject: str, body: bytes, headers: dict[str, str]) -> Any:
    async def run() -> Any:
        import nats as natspy

        nc = await natspy.connect(nats.url)
        try:
            reply = await nc.request(subject, body, headers=headers, timeout=5)
            return json.loads(reply.data)
        finally:
            await nc.close()

    return asyncio.run(run())
