"""What a subscription yields: changes and the stream's control events, typed.

The wire format is docs/design.md (HTTP contract, Stream): a change is a
default-type SSE event whose data is one JSON object; `synced`, `reset` and
`error` are named events. Two more come from the client itself:
`SnapshotStarted` (a new snapshot follows: replace what was built from an
earlier one) and `Reconnecting` (the connection was lost; the client waits,
then resumes from its cursor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """A change event: a row change, a current row (`SNAPSHOT`) or a message (`MESSAGE`).

    `seq` is None for SNAPSHOT rows. `cursor` is where a subscription resumes
    after this event (its SSE `id:`): None for SNAPSHOT rows and for the changes
    sent before a snapshot's hand-off, which cannot be resumed from. `left` is
    true on an UPDATE that takes the row out of the subscription's column
    filters: a replica drops the row.
    """

    op: str  # INSERT | UPDATE | DELETE | TRUNCATE | SNAPSHOT | MESSAGE
    schema: str
    table: str
    pk: Row | None
    row: Row | None
    old: Row | None
    seq: int | None
    cursor: str | None
    txid: str | None
    changed: list[str] | None
    at: str | None
    actor: str | None
    origin: str | None
    mutation_id: str | None
    left: bool
    data: Row = field(repr=False, compare=False)  # the event's JSON as sent

    @property
    def qualified(self) -> str:
        """`schema.table` (for MESSAGE, the topic)."""
        return self.table if self.op == "MESSAGE" else f"{self.schema}.{self.table}"

    @classmethod
    def from_json(cls, data: Row, cursor: str | None = None) -> Change:
        """Read the JSON object of a change event (`cursor`: its SSE `id:`, if any)."""
        seq = data.get("seq")
        return cls(
            op=str(data["op"]),
            schema=str(data.get("schema") or ""),
            table=str(data["table"]),
            pk=data.get("pk"),
            row=data.get("row"),
            old=data.get("old"),
            seq=int(seq) if seq is not None else None,
            cursor=cursor or None,
            txid=data.get("txid"),
            changed=data.get("changed"),
            at=data.get("at"),
            actor=data.get("actor"),
            origin=data.get("origin"),
            mutation_id=data.get("mutation_id"),
            left=data.get("left") is True,
            data=data,
        )


@dataclass(frozen=True, slots=True)
class Synced:
    """Catch-up or snapshot done: live from `cursor` on."""

    cursor: str


@dataclass(frozen=True, slots=True)
class Reset:
    """The cursor was older than the log keeps: what was built from it is cleared.

    The subscription starts over by itself: with a new snapshot when one was
    asked for, otherwise from now (changes in between are lost to a feed).
    """

    reason: str
    earliest: int | None
    data: Row = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class StreamError:
    """The stream's `error` event: it could not serve a change; the server closed it.

    `code` is `filter_failed`, `encode_failed`, `database_error` or
    `stream_failed` (docs/stream.md). Iterating on reconnects with backoff from
    the same cursor; for anything but `database_error` the same request will
    likely fail again on the same change, so change the request or stop.
    """

    code: str
    status: int
    detail: str
    seq: int | None
    problem: Row = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class SnapshotStarted:
    """A connection opened that starts with a snapshot: replace, do not merge."""


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The connection ended (`reason`); the next attempt follows after `delay` seconds."""

    attempt: int
    delay: float
    reason: str


Event = Change | Synced | Reset | StreamError | SnapshotStarted | Reconnecting
