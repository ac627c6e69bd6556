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
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from cdc import reader
from cdc.cursor import Cursor, parse_cursor
from cdc.errors import CursorError, FilterError, StreamFailure
from cdc.events import (
    encode_change,
    encode_control,
    encode_error,
    encode_retry,
    encode_snapshot_row,
)
from cdc.filters import StreamFilter, TableInfo, table_key
from cdc.hub import Hub, Subscriber
from cdc.queries import queries

log = logging.getLogger(__name__)

PAGE = 1000
SNAPSHOT_FETCH = 1000


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
        self, pool: AsyncConnectionPool[Any], flt: StreamFilter, start: int, target: int
    ) -> AsyncIterator[bytes]:
        """The matching changes in (start, target], as `_from_log` would send them."""


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
    hub: Hub, pool: AsyncConnectionPool[Any], plan: Plan, owner: Any = None
) -> AsyncIterator[bytes]:
    """The stream's bytes: retry hint, then snapshot/catch-up, `synced`, then live events."""
    sub = hub.subscribe(plan.filter, owner=owner)
    try:
        async for chunk in _stream(hub, pool, plan, sub):
            yield chunk
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
    except Exception:
        # Whatever went wrong, this client learns why before the stream closes.
        log.exception("stream failed", extra={"component": "stream", "state": "stream_failed"})
        detail = "the stream failed; the server log has the details"
        yield encode_error(500, "stream_failed", detail)
    finally:
        hub.unsubscribe(sub)


def _error_event(exc: StreamFailure) -> bytes:
    extra = {} if exc.seq is None else {"seq": exc.seq}
    return encode_error(exc.status, exc.code, str(exc), **extra)


async def _stream(
    hub: Hub, pool: AsyncConnectionPool[Any], plan: Plan, sub: Subscriber
) -> AsyncIterator[bytes]:
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
        async with pool.connection() as conn:
            async for chunk in snap.rows(conn):
                yield chunk
            view, start = snap.view, snap.seq
            covered = await _coverage(conn, hub, view)
    target = max(sub.joined_at, covered, start)
    if target > start and plan.source is not None:
        async for chunk in plan.source.catch_up(pool, plan.filter, start, target):
            yield chunk
    elif target > start:
        async with pool.connection() as conn:
            async for chunk in _from_log(conn, plan.filter, start, target, view, covered):
                yield chunk
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
        if not flt.matches(c.op, table_key(c), c.new_row, c.old_row):
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


class SnapshotReader:
    """Reads the current rows in one REPEATABLE READ transaction; keeps its view and seq."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.view = SnapshotView(0, 0, frozenset(), "")
        self.seq = 0

    async def rows(self, conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[bytes]:
        """SNAPSHOT events for every matching current row of the plan's tables."""
        flt = self.plan.filter
        async with conn.transaction():
            await conn.execute(queries["repeatable_read"])
            row = await (await conn.execute(queries["snapshot_view"])).fetchone()
            assert row is not None
            self.view = SnapshotView(
                int(row[0]), int(row[1]), frozenset(int(x) for x in row[2]), row[4]
            )
            self.seq = int(row[3])
            for info in self.plan.tables:
                query = sql.SQL("SELECT to_jsonb(t) FROM {} AS t").format(
                    sql.Identifier(info.schema, info.name)
                )
                async with conn.cursor(name="pgtide_snapshot") as cur:
                    await cur.execute(query)
                    while batch := await cur.fetchmany(SNAPSHOT_FETCH):
                        try:
                            out = [
                                encode_snapshot_row(
                                    info.schema, info.name, {k: img.get(k) for k in info.pk}, img
                                )
                                for (img,) in batch
                                if flt.matches_row(info.qualified, img)
                            ]
                        except Exception as exc:
                            raise StreamFailure(
                                "filter_failed",
                                f"this stream cannot apply its filters to a row of {info.name} "
                                "in the snapshot; the server log has the details",
                            ) from exc
                        if out:
                            yield b"".join(out)


async def _coverage(conn: psycopg.AsyncConnection[Any], hub: Hub, view: SnapshotView) -> int:
    """The sequencer's last seq once every transaction the snapshot shows is sequenced."""
    while True:
        cur = await conn.execute(queries["snapshot_covered"], {"snapshot": view.text})
        row = await cur.fetchone()
        assert row is not None
        if row[1]:
            return int(row[0])
        await hub.wait_advanced(0.1)  # the sequencer has work left: wait for its next batch


async def _from_log(
    conn: psycopg.AsyncConnection[Any],
    flt: StreamFilter,
    start: int,
    target: int,
    view: SnapshotView | None,
    covered: int,
) -> AsyncIterator[bytes]:
    """Matching changes in (start, target], read from the log a page at a time."""
    pos = start
    while pos < target:
        batch = await reader.aread_after(conn, Cursor(pos), PAGE)
        if not batch:
            log.warning("stream: log ends at %d before %d (retention?)", pos, target)
            return
        out = []
        for c in batch:
            if c.seq > target:
                break
            if view is not None and c.seq <= covered and view.shows(int(c.txid)):
                continue  # already in the snapshot
            data = _matching(flt, c, covered)
            if data is not None:
                out.append(data)
        pos = min(batch[-1].seq, target)
        if out:
            yield b"".join(out)
