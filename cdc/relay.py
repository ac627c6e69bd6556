"""The relay: publishes every sequenced change to one NATS JetStream stream, once, in order.

One relay publishes at a time: it holds an advisory lock (its own key, not the
sequencer's) on its database connection; a second relay waits for it and takes
over when that connection dies. Each relay process also runs a sequencer,
which leads if it wins the sequencer's lock, so a deployment may run relays
and gateways only.

A session (after any failure the relay starts a new one, with backoff):

1. Take the relay lock; LISTEN for the sequencer's per-batch NOTIFY.
2. Read the stream's position with the JetStream API: stream info gives its
   last sequence L, the message at L carries its seq in `Nats-Msg-Id`, and the
   stream's description the offset (cdc/broker.py). A new stream starts at the
   log's head. The stream is never trusted blindly: a last message whose seq is
   not L + offset, or a seq ahead of the log, stops the relay with an error.
3. Read committed changes after that seq from `pgtide.sync_order` (what the
   sequencer has committed, so durable), publish each with
   `Nats-Expected-Last-Sequence` = its stream sequence - 1, pipelined a page at
   a time, and wait for every acknowledgement before reading on.

The chain is what makes it exact: JetStream stores a message only if the
stream's last sequence is the one the relay expects, so a publish that was
already stored (a lost acknowledgement, a restart, a takeover, a NATS restart,
long after the duplicate window) is refused instead of stored twice, a refused
one stops every later one of the page (nothing skipped, nothing reordered),
and the next session starts from what the stream really holds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import nats.errors
import psycopg

from cdc import db, reader
from cdc.backoff import Backoff
from cdc.broker import (
    EXPECTED_LAST_SEQUENCE,
    EXPECTED_STREAM,
    MSG_ID,
    BrokerError,
    Connection,
    StreamMismatch,
    connect,
    describe_error,
    ensure_stream,
    offset_of,
    set_offset,
)
from cdc.cursor import Cursor
from cdc.errors import PgtideError
from cdc.events import encode_body
from cdc.queries import queries
from cdc.reader import Change
from cdc.sequencer import Sequencer
from cdc.settings import Settings
from cdc.subjects import subject_of

log = logging.getLogger(__name__)

RELAY_LOCK_KEY = 0x70677469646572  # 'pgtider', beside the sequencer's 'pgtides'
PAGE = 1000  # changes read, published and acknowledged at a time
ACK_TIMEOUT_S = 10.0


class RelayGap(PgtideError):
    """The log no longer holds the next change to relay (retention removed it first)."""


class Relay:
    """Relays one database's sequenced changes to one stream; `run()` until cancelled."""

    def __init__(
        self,
        url: str,
        settings: Settings,
        *,
        sequence: bool = True,
        lead_retry_s: float = 0.5,
    ) -> None:
        if not settings.broker_url:
            raise PgtideError("pgtide relay needs PGTIDE_BROKER_URL (nats://host:4222)")
        self.url = url
        self.settings = settings
        self.broker_url = settings.broker_url
        self.stream = settings.broker_stream
        self.lead_retry_s = lead_retry_s
        self.backoff = Backoff(base=settings.reconnect_base_s)
        self.sequencer = Sequencer(url, settings) if sequence else None
        self.publishing = asyncio.Event()  # holds the relay lock and follows the stream
        self.offset = 0
        self.last_seq: int | None = None  # the last seq the stream is known to hold
        self.published = 0
        self.sessions = 0

    async def run(self) -> None:
        """Relay (and sequence, if leading) until cancelled."""
        tasks = [asyncio.create_task(self._relay_forever(), name="pgtide-relay")]
        if self.sequencer is not None:
            tasks.append(asyncio.create_task(self.sequencer.run(), name="pgtide-sequencer"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay_forever(self) -> None:
        while True:
            try:
                await self._session()
            except (psycopg.Error, PgtideError, OSError, nats.errors.Error, TimeoutError) as exc:
                self.publishing.clear()
                delay = self.backoff.next()
                error = (db.first_line if isinstance(exc, psycopg.Error) else describe_error)(exc)
                fatal = isinstance(exc, StreamMismatch | RelayGap)  # needs an operator
                level = logging.ERROR if fatal else logging.WARNING
                log.log(
                    level, "relay: %s; starting over in %.1fs", error, delay,
                    extra={"component": "relay", "state": "reconnecting", "seq": self.last_seq,
                           "error": error, "retry_in_s": round(delay, 3)},
                )  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                self.publishing.clear()

    async def _session(self) -> None:
        name = f"pgtide-relay-{os.getpid()}"
        async with await db.aconnect(self.url, application_name=name) as conn:
            announced = False
            while not await self._try_lead(conn):
                if not announced:
                    log.info("relay: standing by (another relay publishes)",
                             extra={"component": "relay", "state": "standby"})  # fmt: skip
                    announced = True
                self.backoff.reset()  # connected fine: only the lock is missing
                await asyncio.sleep(self.lead_retry_s)
            await conn.execute(queries["listen_sequenced"])
            broker = await connect(self.broker_url, name)
            try:
                await self._publish_forever(conn, broker)
            finally:
                self.publishing.clear()
                await broker.close()

    async def _try_lead(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        row = await (await conn.execute(queries["try_lead"], {"key": RELAY_LOCK_KEY})).fetchone()
        return bool(row and row[0])

    async def _publish_forever(
        self, conn: psycopg.AsyncConnection[Any], broker: Connection
    ) -> None:
        await self._resume(conn, broker)
        inbox = broker.nc.new_inbox()
        acks = await broker.nc.subscribe(f"{inbox}.*")
        self.sessions += 1
        self.publishing.set()
        self.backoff.reset()
        log.info(
            "relay: publishing to stream %s after seq %d", self.stream, self.last_seq,
            extra={"component": "relay", "state": "publishing", "seq": self.last_seq},
        )  # fmt: skip
        while True:
            await self._drain(conn, broker, inbox, acks)
            async for _ in conn.notifies(timeout=self.settings.safety_poll_s, stop_after=1):
                pass
            if broker.closed.is_set():
                raise BrokerError("the connection to NATS was lost")

    async def _resume(self, conn: psycopg.AsyncConnection[Any], broker: Connection) -> None:
        """Find the last seq the stream holds (a new stream starts at the log's head)."""
        js = broker.js
        info = await ensure_stream(js, self.stream, self.settings.broker_max_age)
        row = await (await conn.execute(queries["head"])).fetchone()
        head = int(row[0]) if row else 0
        state, offset = info.state, offset_of(info.config.description)
        if state.last_seq == 0 and (offset is None or offset > head):
            offset = head  # nothing published yet: start at the head of the log
            await set_offset(js, self.stream, offset)
        elif offset is None:
            if state.messages == 0:
                raise StreamMismatch(
                    f"stream {self.stream} has had messages but records no pgtide offset: "
                    "it is not pgtide's, or was edited; delete it to start a new one"
                )
            msg = await js.get_msg(self.stream, state.last_seq)
            offset = int((msg.headers or {}).get(MSG_ID, "0")) - state.last_seq
            await set_offset(js, self.stream, offset)
        last = state.last_seq + offset
        if state.messages > 0:
            msg = await js.get_msg(self.stream, state.last_seq)
            found = (msg.headers or {}).get(MSG_ID)
            if found != str(last):
                raise StreamMismatch(
                    f"stream {self.stream}'s last message (sequence {state.last_seq}) carries "
                    f"Nats-Msg-Id {found!r}, not seq {last}: it was not published by this relay"
                )
        if last > head:
            raise StreamMismatch(
                f"stream {self.stream} holds seq {last}, beyond this database's last seq {head}: "
                "it belongs to another database (or this one was restored from an older backup)"
            )
        self.offset, self.last_seq = offset, last

    async def _drain(
        self, conn: psycopg.AsyncConnection[Any], broker: Connection, inbox: str, acks: Any
    ) -> None:
        """Publish every committed change after `last_seq`, a page at a time."""
        while True:
            assert self.last_seq is not None
            page = await reader.aread_after(conn, Cursor(self.last_seq), PAGE)
            if not page:
                return
            if page[0].seq != self.last_seq + 1:
                raise RelayGap(
                    f"the log no longer holds seq {self.last_seq + 1} (retention removed it "
                    f"before it was relayed); docs/scale-out.md says how to start a new stream"
                )
            await self._publish(broker, inbox, acks, page)
            if len(page) < PAGE:
                return

    async def _publish(
        self, broker: Connection, inbox: str, acks: Any, page: Sequence[Change]
    ) -> None:
        """Publish a page chained on the stream's sequence; return once all are stored."""
        nc = broker.nc
        for c in page:
            body = encode_body(c)
            if len(body) > nc.max_payload:
                raise BrokerError(
                    f"change {c.seq} is {len(body)} bytes, more than NATS's max_payload "
                    f"({nc.max_payload}): raise max_payload in the NATS server's configuration"
                )
            headers = {
                MSG_ID: str(c.seq),
                EXPECTED_LAST_SEQUENCE: str(c.seq - self.offset - 1),
                EXPECTED_STREAM: self.stream,
            }
            subject = subject_of(self.stream, c.op, c.schema_name, c.table_name)
            await nc.publish(subject, body, reply=f"{inbox}.{c.seq}", headers=headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_TIMEOUT_S
        for _ in page:
            try:
                msg = await acks.next_msg(timeout=max(0.001, deadline - loop.time()))
            except nats.errors.TimeoutError:
                raise BrokerError("NATS did not acknowledge the publishes in time") from None
            self._check_ack(int(msg.subject.rsplit(".", 1)[1]), msg)
        self.last_seq = page[-1].seq
        self.published += len(page)

    def _check_ack(self, seq: int, msg: Any) -> None:
        if not msg.data:
            status = (msg.headers or {}).get("Status", "?")
            raise BrokerError(f"no JetStream stream stored seq {seq} (status {status})")
        ack = json.loads(msg.data)
        if "error" in ack:
            err = ack["error"]
            raise BrokerError(
                f"stream {self.stream} refused seq {seq}: {err.get('description')} "
                f"(error {err.get('err_code')}); resuming from the stream's last message"
            )
        if ack.get("seq") != seq - self.offset:
            raise StreamMismatch(
                f"stream {self.stream} stored seq {seq} at sequence {ack.get('seq')}, "
                f"not {seq - self.offset}"
            )
