"""The sequencer: gives every committed change its place `seq` in one true order.

See docs/design.md, sections Ordering and Doorbell. One leader per database (a session
advisory lock on the sequencer's own connection). Each pass reads, in one
statement and so one snapshot, the committed `pgtide.sync_log` rows whose txid is
`>= next_xid` or still in `open_xids`, orders their transactions by largest
log id, and appends `(seq, log_id)` to `pgtide.sync_order` together with the new
state `(xmax, xip + leftovers, last_seq)` in one commit.

Doorbell states (the flag is the `pgtide.sync_doorbell` sequence):

    ASLEEP   flag 1: writers NOTIFY; wait for a ring or the safety poll
    BUSY     flag 0: poll every poll_min_ms while commits keep coming faster than
             poll_above_per_s (an empty pass doubles the interval, never beyond
             the mean gap between commits nor poll_max_ms); slower than that, the
             first empty pass goes to sleep, so a lone commit rings at once
    DRAINING flag 1 again: poll (backing off) until every transaction that
             was open when the flag went up has ended, then ASLEEP

A writer that read flag 0 already had its xid when the flag went up, so it
is either visible to the DRAINING snapshot or in its xip, which DRAINING
waits out: going to sleep loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, LiteralString

import psycopg
from psycopg.rows import tuple_row

from cdc import db
from cdc.backoff import Backoff
from cdc.errors import PgtideError
from cdc.queries import queries
from cdc.reader import Change, change_row
from cdc.settings import Settings

log = logging.getLogger(__name__)

LEADER_LOCK_KEY = 0x70677469646573  # 'pgtides'
DOORBELL_CHANNEL = "pgtide_doorbell"
SEQUENCED_CHANNEL = "pgtide_sequenced"


class LostLeadership(PgtideError):
    """Another sequencer moved the state: this one is no longer the leader."""


class Mode(enum.Enum):
    """Where the sequencer is in the doorbell protocol."""

    STANDBY = "standby"
    BUSY = "busy"
    DRAINING = "draining"
    ASLEEP = "asleep"


@dataclass
class Stats:
    """Counters for tests, logs and metrics."""

    passes: int = 0
    batches: int = 0
    sequenced: int = 0
    rings: int = 0
    safety_polls: int = 0
    reconnects: int = 0


@dataclass
class PassResult:
    """What one discovery pass saw and did."""

    rows: int
    xip: list[int]
    backlog: bool
    transactions: int = 0


def busy_poll(interval: float, per_s: float, settings: Settings) -> float | None:
    """After an empty pass: the next poll interval (s), or None to sleep on the doorbell.

    Commits faster than `poll_above_per_s`: poll, doubling, but never longer than the
    mean gap between commits (nor poll_max_ms), so none waits long on a timer; slower:
    sleep, and the next commit rings at once.
    """
    if per_s < settings.poll_above_per_s:
        return None
    poll_min, poll_max = settings.poll_min_ms / 1000, settings.poll_max_ms / 1000
    return min(interval * 2, poll_max, max(poll_min, 1 / per_s))


@dataclass
class CommitRate:
    """Transactions sequenced per second over the last `window` seconds."""

    window: float = 1.0
    _seen: deque[tuple[float, int]] = field(default_factory=deque)
    _total: int = 0

    def add(self, now: float, transactions: int) -> None:
        """Count `transactions` sequenced at `now` (monotonic seconds)."""
        self._seen.append((now, transactions))
        self._total += transactions

    def per_s(self, now: float) -> float:
        """The rate over the window ending at `now`."""
        while self._seen and self._seen[0][0] < now - self.window:
            self._total -= self._seen.popleft()[1]
        return self._total / self.window


# sequence_batch returning only the seqs: for a sequencer whose batches nobody reads.
_FULL_ROWS = "SELECT ins.seq, l.id, l.txid::text AS txid"


@functools.cache
def quiet_batch(full: LiteralString) -> LiteralString:
    """`full` (sequence_batch) with its last SELECT returning the seqs alone."""
    seqs_only: LiteralString = "SELECT ins.seq FROM ins CROSS JOIN woke ORDER BY ins.seq"
    return full[: full.index(_FULL_ROWS)] + seqs_only


# Called with each committed batch, in seq order: the leader's process feeds its hub from it.
BatchCallback = Callable[[list[Change]], Awaitable[None] | None]


class Sequencer:
    """Runs the sequencer for one database; `run()` until cancelled."""

    def __init__(
        self,
        url: str,
        settings: Settings | None = None,
        *,
        on_batch: BatchCallback | None = None,
        lead_retry_s: float = 0.5,
        reconnect_base_s: float | None = None,
    ) -> None:
        self.url = url
        self.settings = settings or Settings()
        if reconnect_base_s is None:
            reconnect_base_s = self.settings.reconnect_base_s
        self.on_batch = on_batch
        self.lead_retry_s = lead_retry_s
        self.backoff = Backoff(base=reconnect_base_s)
        self.stats = Stats()
        self._mode = Mode.STANDBY
        self.asleep = asyncio.Event()
        self.last_seq = 0
        self.next_xid = 0
        self.open_xids: list[int] = []
        self.leading = asyncio.Event()

    @property
    def mode(self) -> Mode:
        """The current state of the doorbell protocol."""
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value is not self._mode:
            log.debug(
                "sequencer: %s -> %s", self._mode.value, value.value,
                extra={"component": "sequencer", "state": value.value,
                       "previous": self._mode.value, "seq": self.last_seq},
            )  # fmt: skip
        self._mode = value
        if value is Mode.ASLEEP:
            self.asleep.set()
        else:
            self.asleep.clear()

    @property
    def is_leader(self) -> bool:
        """Whether this sequencer holds the leader lock right now."""
        return self.mode is not Mode.STANDBY

    async def run(self) -> None:
        """Lead or wait to lead, forever; reconnect with backoff on any database failure."""
        while True:
            try:
                await self._session()
            except (psycopg.Error, LostLeadership, PgtideError) as exc:
                self._step_down()
                self.stats.reconnects += 1
                delay = self.backoff.next()
                log.warning(
                    "sequencer: %s; reconnecting in %.1fs", db.first_line(exc), delay,
                    extra={"component": "sequencer", "state": "reconnecting",
                           "seq": self.last_seq, "error": db.first_line(exc),
                           "retry_in_s": round(delay, 3)},
                )  # fmt: skip
                await asyncio.sleep(delay)
            finally:
                self._step_down()

    def _step_down(self) -> None:
        if self.mode is not Mode.STANDBY:
            log.info(
                "sequencer: no longer leader",
                extra={"component": "sequencer", "state": "standby", "seq": self.last_seq},
            )
        self.mode = Mode.STANDBY
        self.leading.clear()

    async def _session(self) -> None:
        app_name = f"pgtide-sequencer-{os.getpid()}"
        async with await db.aconnect(self.url, application_name=app_name) as conn:
            while not await self._try_lead(conn):
                self.backoff.reset()  # connected fine: only leadership is missing
                await asyncio.sleep(self.lead_retry_s)
            await conn.execute(queries["sequencer_session"])
            await conn.execute(queries["listen_doorbell"])
            await self._load_state(conn)
            log.info(
                "sequencer: leader from seq %d", self.last_seq,
                extra={"component": "sequencer", "state": "leader", "seq": self.last_seq,
                       "next_xid": self.next_xid, "open_xids": len(self.open_xids)},
            )  # fmt: skip
            self.backoff.reset()
            self.leading.set()
            await self._lead(conn)

    async def _try_lead(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        row = await (await conn.execute(queries["try_lead"], {"key": LEADER_LOCK_KEY})).fetchone()
        return bool(row and row[0])

    async def _load_state(self, conn: psycopg.AsyncConnection[Any]) -> None:
        row = await (await conn.execute(queries["load_state"])).fetchone()
        if row is None:
            raise PgtideError("sync_sequencer has no state row: run `pgtide migrate`")
        self.next_xid = int(row[0])
        self.open_xids = [int(x) for x in row[1]]
        self.last_seq = int(row[2])

    async def _set_flag(self, conn: psycopg.AsyncConnection[Any], value: int) -> None:
        await conn.execute(queries["set_doorbell"], {"value": value})

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        s = self.settings
        poll_min = s.poll_min_ms / 1000
        self.mode = Mode.BUSY
        await self._set_flag(conn, 0)
        interval = poll_min
        waiting_for: set[int] = set()
        rate = CommitRate()
        loop = asyncio.get_running_loop()
        while True:
            result = await self.discover(conn)
            rate.add(loop.time(), result.transactions)
            if result.rows:
                if self.mode is not Mode.BUSY:
                    self.mode = Mode.BUSY
                    await self._set_flag(conn, 0)
                interval = poll_min
                if result.backlog:
                    continue
                await asyncio.sleep(interval)
                continue
            if self.mode is Mode.BUSY:
                polled = busy_poll(interval, rate.per_s(loop.time()), s)
                if polled is not None:
                    interval = polled
                    await asyncio.sleep(interval)
                    continue
                # Quiet: raise the flag, then wait out every transaction open now.
                self.mode = Mode.DRAINING
                await self._set_flag(conn, 1)
                result = await self.discover(conn)
                # Any snapshot taken after the flag went up serves: a writer that read 0
                # already had its xid, so it is visible here or open in this xip. Xids
                # are cluster-wide: only this database's transactions can have read it.
                waiting_for = await self._local(conn, result.xip)
                if result.rows:
                    continue
            elif self.mode is Mode.DRAINING:
                waiting_for &= set(result.xip)
            if self.mode is Mode.DRAINING and not waiting_for:
                self.mode = Mode.ASLEEP
            if self.mode is Mode.DRAINING:
                # Old transactions only: back off, but a ring still wakes us at once.
                interval = min(interval * 2, 0.25)
                await self._wait_ring(conn, interval)
            else:
                rang = await self._wait_ring(conn, s.safety_poll_s)
                if not rang:
                    self.stats.safety_polls += 1

    async def _local(self, conn: psycopg.AsyncConnection[Any], xids: list[int]) -> set[int]:
        """The xids among `xids` that belong to this database's sessions (or its 2PC).

        Another database's long transaction must not keep the sequencer awake. If the
        role cannot see other sessions' xids, fewer are kept: going to sleep early then
        only delays a change until the safety poll, never loses it.
        """
        if not xids:
            return set()
        cur = await conn.execute(queries["local_xids"], {"xids": [str(x) for x in xids]})
        return {int(r[0]) for r in await cur.fetchall()}

    async def _wait_ring(self, conn: psycopg.AsyncConnection[Any], timeout: float) -> bool:
        """Wait for a doorbell ring (or one already received) up to `timeout` seconds."""
        async for _ in conn.notifies(timeout=timeout, stop_after=1):
            self.stats.rings += 1
            return True
        return False

    async def discover(self, conn: psycopg.AsyncConnection[Any]) -> PassResult:
        """One discovery pass: sequence the committed, unsequenced transactions."""
        self.stats.passes += 1
        cur = await conn.execute(
            queries["discover"],
            {"next_xid": str(self.next_xid), "open_xids": [str(x) for x in self.open_xids]},
        )
        row = await cur.fetchone()
        assert row is not None
        xmax = int(row[0])
        xip = [int(x) for x in row[1]]
        txids: list[str] = row[2]
        counts: list[int] = row[3]
        if not txids:
            self.next_xid, self.open_xids = xmax, xip
            return PassResult(0, xip, backlog=False)
        # Whole transactions, in order of their largest id, up to the row budget.
        chosen, rows = 0, 0
        for n in counts:
            if chosen and rows + n > self.settings.batch_rows:
                break
            chosen += 1
            rows += n
        leftover = [int(t) for t in txids[chosen:]]
        open_xids = sorted(set(xip).union(leftover))
        # Without a callback nobody reads the batch: its rows need not cross the wire.
        query = queries["sequence_batch"]
        if self.on_batch is None:
            query = quiet_batch(query)
        cur = conn.cursor(row_factory=change_row if self.on_batch is not None else tuple_row)
        await cur.execute(
            query,
            {
                "last_seq": self.last_seq,
                "txids": txids[:chosen],
                "next_xid": str(xmax),
                "open_xids": [str(x) for x in open_xids],
            },
        )
        batch = await cur.fetchall()
        if not batch:
            raise LostLeadership()
        self.last_seq = batch[-1][0] if isinstance(batch[-1], tuple) else batch[-1].seq
        self.next_xid, self.open_xids = xmax, open_xids
        self.stats.batches += 1
        self.stats.sequenced += rows
        if self.on_batch is not None:
            maybe = self.on_batch(batch)
            if maybe is not None:
                await maybe
        return PassResult(rows, xip, backlog=bool(leftover), transactions=chosen)


def main() -> None:
    """Run a sequencer alone (`python -m cdc.sequencer`); DATABASE_URL picks the database."""
    logging.basicConfig(level=os.environ.get("PGTIDE_LOG_LEVEL", "INFO"), stream=sys.stderr)
    settings = Settings()
    url = db.resolve_url(settings)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Sequencer(url, settings).run())


if __name__ == "__main__":
    main()
