"""The listener: one per process, it keeps the hub fed with sequenced changes.

It runs a sequencer, which leads if it wins the leader lock; the leader's
committed batches go straight to the hub. It also follows `pgtide.sync_order` on its
own autocommit connection (LISTEN first, then read from the hub's position),
woken by the sequencer's per-batch NOTIFY, with a safety poll. Following
covers every process that does not lead, and fills any gap in the leader's
process (leadership changing hands); the hub drops what it already has, so the
two paths never duplicate. On a lost connection it reconnects with backoff and
resumes from the hub's last seq.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg

from cdc import db, reader
from cdc.backoff import Backoff
from cdc.cursor import Cursor
from cdc.errors import PgtideError
from cdc.hub import Hub
from cdc.queries import queries
from cdc.reader import Change
from cdc.sequencer import SEQUENCED_CHANNEL, Sequencer
from cdc.settings import Settings

log = logging.getLogger(__name__)

READ_BATCH = 1000


class Feed(Protocol):
    """What keeps a process's hub fed: a Listener, or a gateway's BrokerFeed (cdc/gateway.py)."""

    sequencer: Sequencer | None
    reconnects: int

    @property
    def ready(self) -> bool:
        """Connected and positioned: the hub can serve subscribers."""

    async def run(self) -> None:
        """Feed the hub until cancelled."""


class Listener:
    """Feeds `hub` for one database; `run()` until cancelled."""

    def __init__(
        self,
        url: str,
        hub: Hub,
        settings: Settings | None = None,
        *,
        sequence: bool = True,
        reconnect_base_s: float | None = None,
    ) -> None:
        self.url = url
        self.hub = hub
        self.settings = settings or Settings()
        if reconnect_base_s is None:
            reconnect_base_s = self.settings.reconnect_base_s
        self.sequencer: Sequencer | None = None
        if sequence:
            self.sequencer = Sequencer(
                url, self.settings, on_batch=self._on_batch, reconnect_base_s=reconnect_base_s
            )
        self.backoff = Backoff(base=reconnect_base_s)
        self.connected = asyncio.Event()
        self.reconnects = 0

    @property
    def ready(self) -> bool:
        """Connected and positioned: the hub can serve subscribers."""
        return self.connected.is_set() and self.hub.last_seq is not None

    async def run(self) -> None:
        """Follow (and, if leading, sequence) until cancelled."""
        tasks = [asyncio.create_task(self._follow_forever(), name="pgtide-follower")]
        if self.sequencer is not None:
            tasks.append(asyncio.create_task(self.sequencer.run(), name="pgtide-sequencer"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_batch(self, changes: list[Change]) -> None:
        """The leader's fast path: publish a committed batch at once if it is contiguous."""
        last = self.hub.last_seq
        if last is not None and changes and changes[0].seq <= last + 1:
            self.hub.publish(changes)
        # Otherwise the follower, woken by the same batch's NOTIFY, reads the gap.

    async def _follow_forever(self) -> None:
        while True:
            try:
                await self._follow()
            except (psycopg.Error, PgtideError, OSError) as exc:
                self.connected.clear()
                self.reconnects += 1
                delay = self.backoff.next()
                log.warning(
                    "listener: %s; reconnecting in %.1fs", db.first_line(exc), delay,
                    extra={"component": "listener", "state": "reconnecting",
                           "seq": self.hub.last_seq, "error": db.first_line(exc),
                           "retry_in_s": round(delay, 3)},
                )  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()

    async def _follow(self) -> None:
        app_name = f"pgtide-listener-{os.getpid()}"
        async with await db.aconnect(self.url, application_name=app_name) as conn:
            await conn.execute(queries["listen_sequenced"])
            if self.hub.last_seq is None:
                row = await (await conn.execute(queries["head"])).fetchone()
                self.hub.start_at(int(row[0]) if row else 0)
            await self._catch_up(conn)
            self.connected.set()
            self.backoff.reset()
            log.info(
                "listener: following from seq %s", self.hub.last_seq,
                extra={"component": "listener", "state": "following", "seq": self.hub.last_seq},
            )  # fmt: skip
            while True:
                woken = await self._wait(conn, self.settings.safety_poll_s)
                if woken is None or woken > (self.hub.last_seq or 0):
                    await self._catch_up(conn)

    async def _wait(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> int | None:
        """The largest seq announced by NOTIFYs received (None: safety poll)."""
        newest: int | None = None
        async for n in conn.notifies(timeout=timeout, stop_after=1):
            if n.channel == SEQUENCED_CHANNEL and n.payload.isdigit():
                newest = max(newest or 0, int(n.payload))
        return newest

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            last = self.hub.last_seq or 0
            batch: Sequence[Change] = await reader.aread_after(conn, Cursor(last), READ_BATCH)
            if not batch:
                return
            self.hub.publish(batch)
            if len(batch) < READ_BATCH:
                return
