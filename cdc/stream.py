"""One subscriber's stream: optional snapshot, catch-up from the log, then the live feed.

`prepare()` checks the request against the log (so bad cursors fail before
the response starts); `events()` yields SSE bytes.

Hand-off without gap or duplicate: the subscriber joins the hub first, at
seq H; everything after H reaches its queue. The stream reads the log from
its start P up to T = max(H, M) (M below), sends `synced` with id T, then
sends the queue's events after T.

Snapshot: in one REPEATABLE READ transaction, read S_seq (the largest seq
visible to it) and the current rows. Changes after S_seq follow, except those
whose transaction the snapshot already shows (txid below xmin, or below xmax
and not in xip). That exclusion cannot travel in a cursor, so events carry no
`id:` until M, the sequencer's last seq once every transaction visible in the
snapshot has been sequenced (beyond M no event can be excluded): a client that
drops before `synced` starts again with a snapshot, one that drops after
resumes exactly.

A stream that cannot apply its filters to a change, or encode one, or read the
log, ends with an `error` event (a problem+json object) and closes; other
streams and the hub are untouched (docs/stream.md, "The `error` event").
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cdc import reader
from cdc.cursor import parse_cursor
from cdc.errors import CursorError, FilterError, StreamFailure
from cdc.events import (
    encode_change,
    encode_control,
    encode_error,
    encode_retry,
    encode_snapshot_row,
)
from cdc.filters import StreamFilter, TableInfo
from cdc.hub import Hub, Subscriber
from cdc.queries import queries
from cdc.streams import Ticket
from cdc.values import exact_loads

log = logging.getLogger(__name__)

PAGE = 1000  # rows a catch-up page reads at most
PAGE_BYTES = 1024 * 1024  # event bytes after which a page stops (it ends on a whole event)
FETCH_FIRST = 32  # rows of a stream's first FETCH; later ones adapt to the rows' sizes
SNAPSHOT_FETCH = 100  # rows per FETCH of a snapshot
SPOOL_MEMORY = 1024 * 1024  # snapshot bytes kept in memory before the spool goes to disk


@dataclass(frozen=True)
class SnapshotView:
    """Which transactions a snapshot shows (pg_snapshot semantics)."""

    xmin: int
    xmax: int
    xip: frozenset[int]
    text: str = ""  # pg_snapshot's text form, to hand back to the database

    def shows(self, txid: int) -> bool:
        """Whether the snapshot already contains this transaction's changes."""
        return txid < self.xmin or (txid < self.xmax and txid not in self.xip)


class CatchUpSource(Protocol):
    """Recent changes from elsewhere than the log: a gateway's stream (cdc/gateway.py)."""

    async def holds(self, start: int) -> bool:
        """Whether it can replay every change after `start` up to the hub's position."""

    def catch_up(
        self, budget: _Budget, flt: StreamFilter, start: int, target: int
    ) -> AsyncIterator[bytes]:
        """The matching changes in (start, target], as `_from_log` would send them; the
        stream's budget gives the connections for what must come from the log."""


@dataclass
class Plan:
    """A checked stream request."""

    filter: StreamFilter
    start: int | None  # None: from now
    snapshot: bool
    reset_earliest: int | None = None  # set when the start is older than the log retains
    tables: list[TableInfo] = field(default_factory=list)
    source: CatchUpSource | None = None  # replays the catch-up instead of the log


async def prepare(
    pool: AsyncConnectionPool[Any],
    catalog: Mapping[str, TableInfo],
    flt: StreamFilter,
    *,
    since: str | None,
    last_event_id: str | None,
    snapshot: bool,
    source: CatchUpSource | None = None,
) -> Plan:
    """Resolve where the stream starts; raise CursorError/FilterError for a bad request.

    `Last-Event-ID` (a reconnecting EventSource) wins over `since` and `snapshot`.
    A start that `source` holds is checked and caught up there, not in the log.
    """
    start: int | None
    if last_event_id is not None and last_event_id.strip() != "":
        start, snapshot = parse_cursor(last_event_id.strip()), False
    elif snapshot:
        if since is not None:
            raise FilterError("since and snapshot=true cannot be combined")
        start = None
    elif since is None or since == "now":
        start = None
    elif since == "earliest":
        start = 0
    else:
        start = parse_cursor(since)
    plan = Plan(flt, start, snapshot)
    if snapshot:
        names = sorted(flt.tables) if flt.tables is not None else sorted(catalog)
        plan.tables = [catalog[n] for n in names]
    if start is not None and not snapshot and source is not None and await source.holds(start):
        plan.source = source
    elif start is not None:
        async with pool.connection() as conn:
            head_row = await (await conn.execute(queries["head"])).fetchone()
            earliest_row = await (await conn.execute(queries["earliest"])).fetchone()
        head = int(head_row[0]) if head_row else 0
        earliest = earliest_row[0] if earliest_row else None
        if start > head:
            raise CursorError(f"cursor {start} is ahead of the log (its last seq is {head})")
        if start < head and (earliest is None or start < int(earliest) - 1):
            plan.reset_earliest = int(earliest) if earliest is not None else head + 1
    return plan


async def events(
    hub: Hub,
    pool: AsyncConnectionPool[Any],
    plan: Plan,
    ticket: Ticket | None = None,
    *,
    snapshots: AsyncConnectionPool[Any] | None = None,
    snapshot_max_s: float = 60.0,
) -> AsyncIterator[bytes]:
    """The stream's bytes: retry hint, then snapshot/catch-up, `synced`, then live events.

    `ticket` (from `Streams.admit`) ends the stream in any phase when stopped.
    Snapshots take their connection from `snapshots` (default: `pool`).
    """
    ticket = ticket if ticket is not None else Ticket(None)
    sub = hub.subscribe(plan.filter, owner=ticket.owner)
    ticket.sub = sub
    if ticket.is_stopped:
        sub.close()
    budget = _Budget(pool, snapshots or pool, snapshot_max_s, ticket)
    try:
        async for chunk in _stream(hub, budget, plan, sub):
            yield chunk
    except _Stopped:
        yield encode_retry()  # revoked (or shutting down): the client learns it on reconnect
    except StreamFailure as exc:
        log.warning("stream: %s", exc, extra={"component": "stream", "state": exc.code})
        yield _error_event(exc)
    except psycopg.Error as exc:
        log.warning(
            "stream: database error: %s", exc,
            extra={"component": "stream", "state": "database_error"},
        )  # fmt: skip
        detail = "the stream lost its database connection; reconnect to resume"
        yield encode_error(503, "database_error", detail)
    except PoolTimeout:
        log.warning("stream: no database connection came free",
                    extra={"component": "stream", "state": "database_error"})  # fmt: skip
        detail = "no database connection came free for this stream; reconnect to resume"
        yield encode_error(503, "database_error", detail)
    except Exception:
        # Whatever went wrong, this client learns why before the stream closes.
        log.exception("stream failed", extra={"component": "stream", "state": "stream_failed"})
        detail = "the stream failed; the server log has the details"
        yield encode_error(500, "stream_failed", detail)
    finally:
        hub.unsubscribe(sub)


class _Stopped(Exception):
    """The stream's ticket was stopped (its token revoked, or shutdown)."""


@dataclass(frozen=True)
class _Budget:
    """Where a stream gets its connections, how long a snapshot may take, and its ticket."""

    pool: AsyncConnectionPool[Any]
    snapshots: AsyncConnectionPool[Any]
    snapshot_max_s: float
    ticket: Ticket

    def check(self) -> None:
        """Raise _Stopped if the stream was told to end."""
        if self.ticket.is_stopped:
            raise _Stopped


def _error_event(exc: StreamFailure) -> bytes:
    extra = {} if exc.seq is None else {"seq": exc.seq}
    return encode_error(exc.status, exc.code, str(exc), **extra)


async def _stream(hub: Hub, budget: _Budget, plan: Plan, sub: Subscriber) -> AsyncIterator[bytes]:
    yield encode_retry()
    if plan.reset_earliest is not None:
        yield encode_control(
            "reset",
            {"reason": "cursor older than the retained log", "earliest": plan.reset_earliest},
        )
        return
    start = plan.start if plan.start is not None else sub.joined_at
    view: SnapshotView | None = None
    covered = 0
    if plan.snapshot:
        snap = SnapshotReader(plan)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            # Read at the database's pace into the spool, then send at the client's:
            # no connection waits on the client.
            async with budget.snapshots.connection() as conn:
                await snap.read(conn, spool, budget)
            spool.seek(0)
            while piece := spool.read(PAGE_BYTES):
                budget.check()
                yield piece
        view, start = snap.view, snap.seq
        covered = await _coverage(budget, hub, view)
    target = max(sub.joined_at, covered, start)
    if target > start and plan.source is not None:
        async for chunk in plan.source.catch_up(budget, plan.filter, start, target):
            yield chunk
    else:
        async for chunk in _from_log(budget, plan.filter, start, target, view, covered):
            yield chunk
    budget.check()
    yield encode_control("synced", {"cursor": str(target)}, cursor=target)
    async for chunk in _live(sub, target):
        yield chunk


async def _live(sub: Subscriber, after: int) -> AsyncIterator[bytes]:
    while True:
        chunks = await sub.next_chunks()
        if sub.failure is not None:
            raise sub.failure  # the hub could not serve this filter: the `error` event
        if sub.overflowed or sub.closed:
            # Too slow (or ended): the client reconnects with Last-Event-ID and catches up.
            yield encode_retry()
            return
        data = b"".join(c.after(after) for c in chunks)
        if data:
            yield data


def _matching(flt: StreamFilter, c: reader.Change, covered: int) -> bytes | None:
    """A catch-up change's bytes for this filter (None: not selected); StreamFailure if it fails."""
    try:
        if not flt.selects(c):
            return None
    except Exception as exc:
        raise StreamFailure(
            "filter_failed",
            f"this stream cannot apply its filters to change {c.seq} of {c.table_name}; "
            "the server log has the details",
            seq=c.seq,
        ) from exc
    try:
        return encode_change(flt.view(c), with_id=c.seq > covered)
    except Exception as exc:
        raise StreamFailure(
            "encode_failed",
            f"this stream cannot encode change {c.seq} of {c.table_name}; "
            "the server log has the details",
            seq=c.seq,
        ) from exc


def snapshot_query(info: TableInfo) -> sql.Composed:
    """Every row of a table as PostgreSQL prints its jsonb, with its key alike: the same
    text a change of it carries (cdc/events.py)."""
    key = sql.SQL(", ").join(
        sql.SQL("{}, t.{}").format(sql.Literal(k), sql.Identifier(k)) for k in info.pk
    )
    return sql.SQL("SELECT to_jsonb(t)::text, jsonb_build_object({})::text FROM {} AS t").format(
        key, sql.Identifier(info.schema, info.name)
    )


class SnapshotReader:
    """Reads the current rows in one REPEATABLE READ transaction; keeps its view and seq."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.view = SnapshotView(0, 0, frozenset(), "")
        self.seq = 0

    async def read(
        self, conn: psycopg.AsyncConnection[Any], spool: IO[bytes], budget: _Budget
    ) -> None:
        """Write SNAPSHOT events for every matching current row of the plan's tables to `spool`.

        The transaction lives at most `budget.snapshot_max_s` (checked after every
        fetch, each bounded by the statement timeout); past it the stream fails
        with `snapshot_timeout`.
        """
        deadline = time.monotonic() + budget.snapshot_max_s
        async with conn.transaction():
            await conn.execute(queries["repeatable_read"])
            row = await (await conn.execute(queries["snapshot_view"])).fetchone()
            assert row is not None
            self.view = SnapshotView(
                int(row[0]), int(row[1]), frozenset(int(x) for x in row[2]), row[4]
            )
            self.seq = int(row[3])
            for info in self.plan.tables:
                query = snapshot_query(info)
                async with conn.cursor(name="pgtide_snapshot") as cur:
                    await cur.execute(query)
                    while batch := await cur.fetchmany(SNAPSHOT_FETCH):
                        budget.check()
                        if time.monotonic() > deadline:
                            raise StreamFailure(
                                "snapshot_timeout",
                                f"the snapshot took longer than {budget.snapshot_max_s:g} s "
                                "to read; narrow its tables or filters, or follow changes "
                                "without a snapshot",
                                status=503,
                            )
                        spool.write(self._encode(info, batch))

    def _encode(self, info: TableInfo, batch: list[Any]) -> bytes:
        flt, table = self.plan.filter, info.qualified
        try:
            if not flt.reads_rows(table):
                if not flt.matches_row(table, {}):
                    return b""
                return b"".join(
                    encode_snapshot_row(info.schema, info.name, pk, row) for row, pk in batch
                )
            return b"".join(
                encode_snapshot_row(info.schema, info.name, pk, row)
                for row, pk in batch
                if flt.matches_row(table, exact_loads(row))
            )
        except Exception as exc:
            raise StreamFailure(
                "filter_failed",
                f"this stream cannot apply its filters to a row of {info.name} "
                "in the snapshot; the server log has the details",
            ) from exc


async def _coverage(budget: _Budget, hub: Hub, view: SnapshotView) -> int:
    """The sequencer's last seq once every transaction the snapshot shows is sequenced."""
    while True:
        budget.check()
        async with budget.pool.connection() as conn:
            cur = await conn.execute(queries["snapshot_covered"], {"snapshot": view.text})
            row = await cur.fetchone()
        assert row is not None
        if row[1]:
            return int(row[0])
        await hub.wait_advanced(0.1)  # the sequencer has work left: wait for its next batch


async def _from_log(
    budget: _Budget,
    flt: StreamFilter,
    start: int,
    target: int,
    view: SnapshotView | None,
    covered: int,
) -> AsyncIterator[bytes]:
    """Matching changes in (start, target], a page at a time.

    Each page takes a pooled connection, reads at most PAGE rows or about
    PAGE_BYTES of events, and gives the connection back before its bytes are
    sent: a slow client never holds a connection.
    """
    page = _Page(flt, view, covered)
    pos = start
    while pos < target:
        budget.check()
        async with budget.pool.connection() as conn:
            reached, data = await page.read(conn, pos, target)
        if reached == pos:
            log.warning("stream: log ends at %d before %d (retention?)", pos, target)
            return
        pos = reached
        if data:
            yield data


class _Page:
    """Reads catch-up pages through a server-side cursor, sized to about PAGE_BYTES."""

    def __init__(self, flt: StreamFilter, view: SnapshotView | None, covered: int) -> None:
        self.flt = flt
        self.view = view
        self.covered = covered
        self.fetch = FETCH_FIRST  # rows per FETCH, adapted to the bytes per row seen

    async def read(
        self, conn: psycopg.AsyncConnection[Any], pos: int, target: int
    ) -> tuple[int, bytes]:
        """(the seq reached, the page's bytes) for changes in (pos, target]."""
        out: list[bytes] = []
        size = rows = 0
        reached = pos
        async with (
            conn.transaction(),
            conn.cursor(name="pgtide_catchup", row_factory=reader.change_row) as cur,
        ):
            await cur.execute(queries["read_range"], {"after": pos, "until": target})
            while rows < PAGE and size < PAGE_BYTES:
                batch = await cur.fetchmany(min(self.fetch, PAGE - rows))
                for c in batch:
                    data = self._bytes(c)
                    if data is not None:
                        out.append(data)
                        size += len(data)
                    reached, rows = c.seq, rows + 1
                    if size >= PAGE_BYTES:
                        break
                if len(batch) < self.fetch:
                    break
                self.fetch = min(PAGE, self.fetch * 2)
        # The next page starts with as many rows as about fill one at this page's sizes.
        self.fetch = max(1, min(PAGE, PAGE_BYTES * rows // max(size, 1), FETCH_FIRST * 8))
        return reached, b"".join(out)

    def _bytes(self, c: reader.Change) -> bytes | None:
        if self.view is not None and c.seq <= self.covered and self.view.shows(int(c.txid)):
            return None  # already in the snapshot
        return _matching(self.flt, c, self.covered)
