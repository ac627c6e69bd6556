"""A gateway's change feed: the hub fed from the NATS JetStream stream, not from PostgreSQL.

`pgtide serve` with `PGTIDE_BROKER_URL` runs a `BrokerFeed` where a plain server
runs a Listener: it neither sequences nor LISTENs nor reads `pgtide.sync_order`.
One ordered consumer per process (ephemeral, flow-controlled, no acks) starts
at the stream sequence after the hub's position (seq - offset, cdc/broker.py)
and hands each run of messages to the hub as changes that keep their JSON, so
every event is sent byte for byte as the relay encoded it. Every message is
checked: its stream sequence must follow the last one and carry that seq in
`Nats-Msg-Id`; anything else (a gap, a NATS restart, a lost connection) ends
the session, and the next one resumes from the hub's position.

`JetStreamCatchUp` replays a reconnecting client's catch-up from the stream
when the stream still holds its cursor (docs/scale-out.md); older cursors are
caught up from the log, as in a plain server. Only when the stream no longer
holds changes the gateway has not seen (it was away longer than the stream's
retention) does the feed read that gap from the log, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import psycopg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from psycopg_pool import AsyncConnectionPool

from cdc import reader
from cdc.backoff import Backoff
from cdc.broker import (
    MSG_ID,
    BrokerChange,
    BrokerError,
    Connection,
    StreamMismatch,
    StreamPosition,
    connect,
    decode_change,
    describe_error,
    position,
)
from cdc.cursor import Cursor
from cdc.errors import PgtideError
from cdc.filters import StreamFilter
from cdc.hub import Hub
from cdc.sequencer import Sequencer
from cdc.settings import Settings
from cdc.stream import _Budget, _from_log, _matching
from cdc.subjects import all_subjects

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # the consumers' idle heartbeat: a dead consumer is noticed in ~2 s
CATCH_UP_IDLE_S = 5.0  # a catch-up consumer silent this long is given up for the log
POSITION_TTL_S = 1.0  # how long the stream's first seq is trusted (it moves with retention)
FEED_BATCH = 1000


class BrokerFeed:
    """Feeds `hub` from the stream; `run()` until cancelled. Shaped like a Listener."""

    sequencer: Sequencer | None = None  # a gateway never sequences

    def __init__(self, settings: Settings, hub: Hub, pool: AsyncConnectionPool[Any]) -> None:
        if not settings.broker_url:
            raise PgtideError("a gateway needs PGTIDE_BROKER_URL")
        self.url = settings.broker_url
        self.stream = settings.broker_stream
        self.hub = hub
        self.pool = pool  # only to read a gap the stream no longer holds
        self.backoff = Backoff(base=settings.reconnect_base_s)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.gaps_read = 0  # changes read from the log because the stream had lost them
        self.broker: Connection | None = None
        self.offset = 0
        self._position: StreamPosition | None = None
        self._position_at = 0.0

    @property
    def ready(self) -> bool:
        """Following the stream: the hub can serve subscribers."""
        return self.connected.is_set() and self.hub.last_seq is not None

    async def run(self) -> None:
        """Follow the stream until cancelled; start over after any failure."""
        while True:
            try:
                await self._session()
            except (PgtideError, psycopg.Error, OSError, nats.errors.Error, TimeoutError) as exc:
                self.connected.clear()
                self.reconnects += 1
                delay = self.backoff.next()
                error = describe_error(exc)
                log.warning(
                    "gateway: %s; resuming from seq %s in %.1fs", error, self.hub.last_seq, delay,
                    extra={"component": "gateway", "state": "reconnecting",
                           "seq": self.hub.last_seq, "error": error,
                           "retry_in_s": round(delay, 3)},
                )  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()

    async def stream_position(self) -> StreamPosition | None:
        """The stream's position, at most POSITION_TTL_S old (None: not following it)."""
        broker = self.broker
        if broker is None or not self.ready:
            return None
        if self._position is None or time.monotonic() - self._position_at > POSITION_TTL_S:
            self._position = await position(broker.js, self.stream)
            self._position_at = time.monotonic()
        return self._position

    async def _session(self) -> None:
        broker = await connect(self.url, f"pgtide-gateway-{os.getpid()}")
        self.broker = broker
        try:
            pos = await self._wait_for_stream(broker)
            self.offset = pos.offset
            if self.hub.last_seq is None:
                self.hub.start_at(pos.last)
            elif self.hub.last_seq < pos.first - 1:
                await self._read_gap(pos.first - 1)
            await self._follow(broker)
        finally:
            self.broker = None
            self._position = None
            await broker.close()

    async def _wait_for_stream(self, broker: Connection) -> StreamPosition:
        announced = False
        while True:
            pos = await position(broker.js, self.stream)
            if pos is not None:
                return pos
            if not announced:
                log.warning(
                    "gateway: stream %s does not exist yet: waiting for a relay", self.stream,
                    extra={"component": "gateway", "state": "waiting"},
                )  # fmt: skip
                announced = True
            await asyncio.sleep(0.5)
            if broker.closed.is_set():
                raise BrokerError("the connection to NATS was lost")

    async def _read_gap(self, until: int) -> None:
        """The stream has expired changes this gateway never saw: read them from the log."""
        assert self.hub.last_seq is not None
        log.warning(
            "gateway: the stream no longer holds seqs %d..%d: reading them from the log",
            self.hub.last_seq + 1, until,
            extra={"component": "gateway", "state": "gap", "seq": self.hub.last_seq},
        )  # fmt: skip
        async with self.pool.connection() as conn:
            while self.hub.last_seq < until:
                page = await reader.aread_after(conn, Cursor(self.hub.last_seq), FEED_BATCH)
                page = [c for c in page if c.seq <= until]
                if not page:
                    raise BrokerError(f"the log does not hold seq {self.hub.last_seq + 1} either")
                self.hub.publish(page)
                self.gaps_read += len(page)

    async def _follow(self, broker: Connection) -> None:
        assert self.hub.last_seq is not None
        arrived: deque[Msg] = deque()
        wake = asyncio.Event()

        async def on_message(msg: Msg) -> None:
            arrived.append(msg)
            wake.set()

        sub = await subscribe_from(broker.js, self.stream, self.hub.last_seq + 1 - self.offset,
                                   cb=on_message)  # fmt: skip
        watcher = asyncio.create_task(_set_when(broker.closed, wake))
        self.connected.set()
        self.backoff.reset()
        log.info(
            "gateway: following stream %s from seq %d", self.stream, self.hub.last_seq,
            extra={"component": "gateway", "state": "following", "seq": self.hub.last_seq},
        )  # fmt: skip
        try:
            while True:
                await wake.wait()
                wake.clear()
                if broker.closed.is_set():
                    raise BrokerError("the connection to NATS was lost")
                while arrived:
                    batch = self._decode_run(arrived)
                    if batch:
                        self.hub.publish(batch)
        finally:
            watcher.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _decode_run(self, arrived: deque[Msg]) -> list[BrokerChange]:
        """Up to FEED_BATCH changes continuing the hub's position (repeats dropped)."""
        assert self.hub.last_seq is not None
        last = self.hub.last_seq
        out: list[BrokerChange] = []
        while arrived and len(out) < FEED_BATCH:
            msg = arrived.popleft()
            seq = checked_seq(msg, self.offset)
            if seq <= last:
                continue
            if seq != last + 1:
                raise BrokerError(f"the stream skipped from seq {last} to {seq}")
            out.append(decode_change(msg.data))
            last = seq
        return out


async def _set_when(event: asyncio.Event, wake: asyncio.Event) -> None:
    await event.wait()
    wake.set()


def checked_seq(msg: Msg, offset: int) -> int:
    """The seq of a stream message, checked against its stream sequence and the offset."""
    seq = msg.metadata.sequence.stream + offset
    found = (msg.headers or {}).get(MSG_ID)
    if found != str(seq):
        raise StreamMismatch(
            f"message at stream sequence {seq - offset} carries Nats-Msg-Id {found!r}, "
            f"not seq {seq}: the stream was not written by pgtide's relay alone"
        )
    return seq


async def subscribe_from(
    js: JetStreamContext, stream: str, stream_seq: int, cb: Any = None
) -> JetStreamContext.PushSubscription:
    """An ordered consumer of every subject of the stream, from `stream_seq` on."""
    config = js_api.ConsumerConfig(
        deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(1, stream_seq)
    )
    return await js.subscribe(
        all_subjects(stream), stream=stream, cb=cb, ordered_consumer=True,
        idle_heartbeat=HEARTBEAT_S, config=config,
    )  # fmt: skip


class JetStreamCatchUp:
    """Replays catch-ups from the stream for the streams of one gateway (cdc/stream.py)."""

    def __init__(self, feed: BrokerFeed) -> None:
        self.feed = feed
        self.replayed = 0  # changes read from the stream for catch-ups
        self.fallbacks = 0  # catch-ups finished from the log

    async def holds(self, start: int) -> bool:
        """Whether the stream holds every change after `start` this gateway has seen."""
        last = self.feed.hub.last_seq
        if last is None or start > last:
            return False
        try:
            pos = await self.feed.stream_position()
        except (nats.errors.Error, PgtideError, TimeoutError):
            return False
        return pos is not None and start >= pos.first - 1

    async def catch_up(
        self, budget: _Budget, flt: StreamFilter, start: int, target: int
    ) -> AsyncIterator[bytes]:
        """Matching changes in (start, target]: from the stream, the rest from the log."""
        pos = start
        broker = self.feed.broker
        if broker is not None:
            try:
                async for chunk, reached in self._from_stream(broker, flt, start, target):
                    pos = reached
                    if chunk:
                        yield chunk
            except (nats.errors.Error, PgtideError, TimeoutError) as exc:
                log.warning("gateway: catch-up from the stream stopped at seq %d (%s); "
                            "the rest comes from the log", pos, describe_error(exc))  # fmt: skip
        if pos < target:
            self.fallbacks += 1
            async for chunk in _from_log(budget, flt, pos, target, None, 0):
                yield chunk

    async def _from_stream(
        self, broker: Connection, flt: StreamFilter, start: int, target: int
    ) -> AsyncIterator[tuple[bytes, int]]:
        offset = self.feed.offset
        sub = await subscribe_from(broker.js, self.feed.stream, start + 1 - offset)
        try:
            pos, out = start, []
            while pos < target:
                try:
                    msg = await sub.next_msg(timeout=CATCH_UP_IDLE_S)
                except nats.errors.TimeoutError:
                    break
                seq = checked_seq(msg, offset)
                if seq <= pos:
                    continue
                if seq != pos + 1:
                    break  # the stream lost it meanwhile (retention): the log has it
                data = _matching(flt, decode_change(msg.data), 0)
                pos = seq
                self.replayed += 1
                if data is not None:
                    out.append(data)
                if len(out) >= 256 or sub.pending_msgs == 0:
                    yield b"".join(out), pos
                    out = []
            yield b"".join(out), pos
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
