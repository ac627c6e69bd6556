"""The in-process fan-out hub.

The listener publishes contiguous runs of changes (seq last+1, last+2, ...).
Each change is encoded once; subscribers with equal filters share one joined
chunk per batch, so a batch costs one encode per change plus one join per
distinct filter, whatever the number of subscribers. Every subscriber has a
byte-bounded queue; one that falls too far behind is closed (it resumes from
its cursor) instead of growing memory.

Whatever one subscriber's filter or encoding does, `publish` goes on: a failure
while selecting or encoding for one filter ends the subscribers of that filter
alone (they get an `error` event, cdc/stream.py) and the feed moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc.errors import StreamFailure
from cdc.events import encode_change
from cdc.filters import StreamFilter, table_key
from cdc.reader import Change
from cdc.values import of_row

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_BYTES = 4 * 1024 * 1024
# Upper bounds (seconds) of the change-to-publish lag histogram.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class LagHistogram:
    """Cumulative-style buckets of lag, kept by the hub for /metrics (no library here)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        i = next((k for k, b in enumerate(LAG_BUCKETS) if seconds <= b), len(LAG_BUCKETS))
        self.counts[i] += 1
        self.total += seconds
        self.n += 1


@dataclass(slots=True)
class Chunk:
    """Events for one subscriber from one batch: their seqs and their joined bytes."""

    seqs: tuple[int, ...]
    data: bytes
    parts: tuple[bytes, ...]

    @property
    def last(self) -> int:
        return self.seqs[-1]

    def after(self, cursor: int) -> bytes:
        """The bytes of the events with seq > cursor."""
        if self.seqs[0] > cursor:
            return self.data
        return b"".join(p for s, p in zip(self.seqs, self.parts, strict=True) if s > cursor)


@dataclass(eq=False)
class Subscriber:
    """A live subscription: a filter, a bounded queue, and where it joined the feed."""

    filter: StreamFilter
    joined_at: int
    max_pending: int
    owner: Any = None  # who opened it (a token id), so it can be closed on revocation
    queue: deque[Chunk] = field(default_factory=deque)
    pending: int = 0
    overflowed: bool = False
    closed: bool = False
    failure: StreamFailure | None = None  # why the hub ended it, for its `error` event
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, chunk: Chunk) -> None:
        if self.overflowed or self.closed:
            return
        # An empty queue takes any chunk: one batch larger than the bound (a big
        # transaction, a backlog) must not cut off a subscriber that keeps up.
        if self.pending and self.pending + len(chunk.data) > self.max_pending:
            # Too far behind: drop the backlog and tell the stream to close.
            self.overflowed = True
            self.queue.clear()
            self.pending = 0
        else:
            self.queue.append(chunk)
            self.pending += len(chunk.data)
        self.wakeup.set()

    async def next_chunks(self, timeout: float | None = None) -> list[Chunk]:
        """Wait for queued chunks (empty on timeout, or when overflowed/closed)."""
        if not self.queue and not (self.overflowed or self.closed):
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except TimeoutError:
                return []
        out = list(self.queue)
        self.queue.clear()
        self.pending = 0
        return out

    def close(self) -> None:
        """End this subscription (its stream ends at the next wake-up)."""
        self.closed = True
        self.wakeup.set()

    def fail(self, failure: StreamFailure) -> None:
        """End this subscription with an error its stream reports before closing."""
        self.failure = failure
        self.queue.clear()
        self.pending = 0
        self.close()


class Hub:
    """Fans out sequenced changes to subscribers in this process."""

    def __init__(self, max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES) -> None:
        self.last_seq: int | None = None  # None until the listener knows where the log is
        self.subscribers: set[Subscriber] = set()
        self.max_pending_bytes = max_pending_bytes
        self._advanced = asyncio.Event()
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.failed = 0  # subscribers ended because their filter or encoding failed
        self.lag = LagHistogram()

    def start_at(self, seq: int) -> None:
        """Set the position the feed continues from (once, when the listener first connects)."""
        if self.last_seq is None:
            self.last_seq = seq

    def subscribe(
        self, flt: StreamFilter, max_pending: int | None = None, owner: Any = None
    ) -> Subscriber:
        """Join the live feed: the subscriber receives every matching change after `joined_at`."""
        if self.last_seq is None:
            raise RuntimeError("the hub is not ready: the listener has not connected yet")
        sub = Subscriber(flt, self.last_seq, max_pending or self.max_pending_bytes, owner)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Leave the feed."""
        self.subscribers.discard(sub)
        sub.close()

    def publish(self, changes: Sequence[Change]) -> None:
        """Deliver changes; those at or below `last_seq` are dropped (already delivered).

        The remaining run must continue at `last_seq + 1`: a gap is a bug in the
        caller, which must read the missing changes from the database first.
        """
        if self.last_seq is None:
            return
        fresh = [c for c in changes if c.seq > self.last_seq]
        if not fresh:
            return
        if fresh[0].seq != self.last_seq + 1:
            raise RuntimeError(f"gap in the feed: {self.last_seq} then {fresh[0].seq}")
        # Nobody listening (e.g. the leader's process while no stream is open): no encoding.
        encoded = [(c, table_key(c), _encode(c)) for c in fresh] if self.subscribers else []
        filters = {sub.filter.key: sub.filter for sub in self.subscribers}
        routed = route(filters, encoded)
        chunks = {key: _select(flt, routed[key]) for key, flt in filters.items()}
        for sub in list(self.subscribers):
            chunk = chunks[sub.filter.key]
            if isinstance(chunk, StreamFailure):
                self.failed += 1
                self.subscribers.discard(sub)
                sub.fail(chunk)
            elif chunk is not None:
                sub.push(chunk)
                if sub.overflowed:
                    self.dropped += 1
                    self.subscribers.discard(sub)
                    log.warning(
                        "hub: subscriber %d bytes behind, closing it", sub.max_pending,
                        extra={"component": "hub", "state": "subscriber_dropped",
                               "seq": fresh[-1].seq, "limit_bytes": sub.max_pending},
                    )  # fmt: skip
                else:
                    self.delivered += len(chunk.seqs)
        self.last_seq = fresh[-1].seq
        self.published += len(fresh)
        # From the change's clock time (taken in its transaction) to publication here.
        self.lag.observe(max(0.0, time.time() - fresh[-1].at.timestamp()))
        # Wake whoever waits for the feed to move (snapshot streams), then re-arm.
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def wait_advanced(self, timeout: float) -> None:
        """Return when the next batch is published, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._advanced.wait(), timeout)


def _encode(change: Change) -> bytes | None:
    """The shared encoding of a change; None if it cannot be encoded (whoever selects it fails)."""
    try:
        return encode_change(change)
    except Exception:
        log.exception(
            "hub: change %d cannot be encoded",
            change.seq,
            extra={"component": "hub", "state": "encode_failed", "seq": change.seq},
        )
        return None


Encoded = tuple[Change, str, bytes | None]  # a change, its table_key, its shared bytes
_ROW_OPS = frozenset({"INSERT", "UPDATE", "DELETE"})


def route(filters: Mapping[Any, StreamFilter], encoded: list[Encoded]) -> dict[Any, list[Encoded]]:
    """The changes each distinct filter must look at, in seq order.

    A filter with an `eq` column filter is shown only the row changes whose new or
    old image holds its value, found by one dict lookup per change and indexed
    column however many such filters there are; every other change (TRUNCATE,
    MESSAGE) and every other filter sees the whole batch. Routing only prunes:
    `_select` still applies the whole filter to what it is shown.
    """
    routed: dict[Any, list[Encoded]] = {}
    # table -> (column, kind) -> value key -> filter keys
    index: dict[str, dict[tuple[str, str], dict[Any, list[Any]]]] = {}
    indexed: list[Any] = []
    for key, flt in filters.items():
        if not flt.equalities:
            routed[key] = encoded
            continue
        indexed.append(key)
        routed[key] = []
        for table, eq in flt.equalities.items():
            by_value = index.setdefault(table, {}).setdefault((eq.column, eq.kind), {})
            by_value.setdefault(eq.key, []).append(key)
    if not indexed:
        return routed
    for item in encoded:
        c, table, _ = item
        if c.op not in _ROW_OPS:
            for key in indexed:
                routed[key].append(item)
            continue
        columns = index.get(table)
        if columns is None:  # no indexed filter has predicates on this table: none matches
            continue
        try:
            hits = _hits(c, columns)
        except Exception:  # a value its kind cannot read: each filter judges (and fails) alone
            hits = set(indexed)
        for key in hits:
            routed[key].append(item)
    return routed


def _hits(c: Change, columns: dict[tuple[str, str], dict[Any, list[Any]]]) -> set[Any]:
    hits: set[Any] = set()
    for (column, kind), by_value in columns.items():
        for img in (c.new_row, c.old_row):
            if img is not None:
                value = of_row(kind, img.get(column))
                if value is not None:
                    hits.update(by_value.get(value, ()))
    return hits


def _select(flt: StreamFilter, encoded: list[Encoded]) -> Chunk | StreamFailure | None:
    """One filter's chunk of a batch (None: nothing matches), or why it cannot be made.

    Never raises: a filter that fails on one change must not stop the feed.
    """
    picked: list[tuple[int, bytes]] = []
    selects, rewrites = flt.selects, flt.rewrites
    for c, table, data in encoded:
        try:
            if not selects(c, table):
                continue
        except Exception as exc:
            return _failure(flt, c, "filter_failed", "cannot apply this stream's filters to", exc)
        try:
            if data is None:
                raise ValueError("the change cannot be encoded as JSON")
            picked.append((c.seq, _view_bytes(flt, c, data) if rewrites else data))
        except Exception as exc:
            return _failure(flt, c, "encode_failed", "cannot encode", exc)
    if not picked:
        return None
    return Chunk(
        tuple(s for s, _ in picked), b"".join(d for _, d in picked), tuple(d for _, d in picked)
    )


def _failure(flt: StreamFilter, c: Change, code: str, what: str, exc: Exception) -> StreamFailure:
    # The detail names the change, not the exception: its message may hold row values.
    log.warning(
        "hub: %s change %d for a subscriber (%s: %s); ending that subscriber",
        what, c.seq, type(exc).__name__, exc, exc_info=exc,
        extra={"component": "hub", "state": code, "seq": c.seq},
    )  # fmt: skip
    detail = f"this stream {what} change {c.seq} of {c.table_name}; the server log has the details"
    return StreamFailure(code, detail, seq=c.seq)


def _view_bytes(flt: StreamFilter, change: Change, data: bytes) -> bytes:
    """A pinned or column-filtered subscriber's bytes: the shared encoding unless its view
    rewrites the change (a pin's INSERT/DELETE, an UPDATE that leaves the filters)."""
    seen = flt.view(change)
    return data if seen is change else encode_change(seen)
