"""A subscription's state, without I/O: what to ask for, what an SSE event means, how long to wait.

The async and sync drivers (subscribe.py) open connections and feed this the
events they read; everything that decides behaviour lives here, so both
drivers behave alike and the rules are tested without a network:

- the cursor is the last `id:` the server sent (a change's, or `synced`'s);
  a reconnect sends it as `Last-Event-ID`, which the server resumes after
  (it wins over `since` and `snapshot`);
- a change whose `seq` is not above the highest one yielded is dropped, so
  none is yielded twice whatever the connections did;
- without a cursor, a `snapshot=True` subscription starts over with a new
  snapshot (`SnapshotStarted`: replace what was built, do not merge);
- after `reset` the cursor is forgotten: a new snapshot, or from now;
- waits grow from the server's `retry:` (1 s), doubling, with ±20 % jitter,
  capped (30 s), and start again from `retry:` once the stream is live;
  a `Retry-After` header is a floor.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from httpx_sse import ServerSentEvent

from pgtide_client.errors import http_error
from pgtide_client.events import (
    Change,
    Event,
    Reconnecting,
    Reset,
    SnapshotStarted,
    StreamError,
    Synced,
)

HEARTBEAT_TIMEOUT_S = 30.0  # the server sends a comment at least every 15 s
MAX_BACKOFF_S = 30.0
RETRY_MS = 1000  # until the server says otherwise with `retry:`
FINAL = frozenset({400, 401, 403, 404})  # refusals that a retry cannot fix


@dataclass(frozen=True)
class Request:
    """The query parameters and headers of the next connection."""

    params: list[tuple[str, str]]
    headers: dict[str, str]


@dataclass
class Session:
    """Where a subscription stands, and what to do next."""

    tables: Sequence[str] | None = None
    ops: Sequence[str] | None = None
    topics: Sequence[str] | None = None
    filters: Mapping[str, str] = field(default_factory=dict)
    since: str | None = None
    snapshot: bool = False
    cursor: str | None = None  # the last `id:` received: where a reconnect resumes
    max_backoff: float = MAX_BACKOFF_S
    jitter: Callable[[], float] = field(default=lambda: random.uniform(0.8, 1.2))
    last_seq: int | None = None  # the highest seq yielded: nothing at or below it again
    retry_ms: int = RETRY_MS
    attempt: int = 0  # failures since the stream was last live
    restarted: bool = False  # after `reset`: `since` no longer applies

    def __post_init__(self) -> None:
        self.resume_from(self.cursor)

    def resume_from(self, cursor: str | None) -> None:
        """Start from this cursor (a persisted replica's), or as asked when None."""
        self.cursor = cursor
        start = cursor if cursor is not None else self.since
        self.last_seq = int(start) if start is not None and start.isdigit() else None

    def filter_params(self) -> list[tuple[str, str]]:
        """What the stream selects: tables, ops, topics and column filters."""
        params: list[tuple[str, str]] = []
        for name, items in (("tables", self.tables), ("ops", self.ops), ("topics", self.topics)):
            if items:
                params.append((name, ",".join(items)))
        params.extend((col, spec) for col, spec in self.filters.items())
        return params

    def signature(self) -> str:
        """The selection as text: a replica built for another selection is not resumed."""
        return json.dumps(sorted(self.filter_params()), separators=(",", ":"))

    def request(self) -> Request:
        """Parameters and headers of the next connection."""
        params = self.filter_params()
        headers: dict[str, str] = {}
        if self.cursor is not None:
            headers["Last-Event-ID"] = self.cursor
        elif self.snapshot:
            params.append(("snapshot", "true"))
        elif self.since is not None and not self.restarted:
            params.append(("since", self.since))
        return Request(params, headers)

    def opened(self) -> list[Event]:
        """Events to yield when a connection was answered 200."""
        return [SnapshotStarted()] if self.cursor is None and self.snapshot else []

    def receive(self, sse: ServerSentEvent) -> Event | None:
        """The event an SSE message stands for (None: nothing to yield)."""
        if sse.retry is not None:
            self.retry_ms = sse.retry
        name = sse.event or "message"
        if name == "message":
            if not sse.data:
                return None  # a `retry:` block alone dispatches nothing
            change = Change.from_json(json.loads(sse.data), sse.id)
            if sse.id:
                self.cursor = sse.id
            if change.seq is not None:
                if self.last_seq is not None and change.seq <= self.last_seq:
                    return None  # yielded before this connection
                self.last_seq = change.seq
            return change
        data: dict[str, Any] = json.loads(sse.data) if sse.data else {}
        if name == "synced":
            cursor = sse.id or str(data.get("cursor") or "")
            if cursor:
                self.cursor = cursor
                if cursor.isdigit():
                    self.last_seq = max(self.last_seq or 0, int(cursor))
            self.attempt, self.restarted = 0, False
            return Synced(cursor)
        if name == "reset":
            self.cursor, self.restarted = None, True
            earliest = data.get("earliest")
            return Reset(str(data.get("reason") or ""), _int(earliest), data)
        if name == "error":
            return StreamError(
                str(data.get("code") or "stream_failed"), _int(data.get("status")) or 500,
                str(data.get("detail") or ""), _int(data.get("seq")), data,
            )  # fmt: skip
        return None  # an event this client does not know: newer servers may add some

    def refused(self, status: int, body: bytes) -> None:
        """A connection answered with something else than a stream: raise if it is final."""
        if status in FINAL:
            raise http_error(status, _problem(status, body))

    def failed(self, reason: str, retry_after: float | None = None) -> Reconnecting:
        """The connection ended: how long to wait before the next one."""
        base = self.retry_ms / 1000 * 2.0 ** min(self.attempt, 16)
        delay = min(self.max_backoff, base * self.jitter())
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        self.attempt += 1
        return Reconnecting(self.attempt, delay, reason)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def _problem(status: int, body: bytes) -> dict[str, Any]:
    try:
        problem = json.loads(body)
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        return problem
    return {"status": status, "detail": body.decode(errors="replace")[:500] or str(status)}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """A `Retry-After` header in seconds (the HTTP-date form is not used by pgtide)."""
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
