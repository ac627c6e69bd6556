"""Outbox: writes queued offline in SQLite, sent with `POST /api/sync/push`.

The semantics of the browser's Outbox (docs/browser.md), in a file:

- `enqueue` returns once the mutation is committed to disk (`synchronous=FULL`);
  each has its own mutation id (a UUID v4) and a `client_ts`; an insert
  without an id gets one at once, so later mutations can refer to the row.
- A record is removed only when the server answered `applied` or `duplicate`,
  in one transaction for the whole answer. A process killed mid-push keeps
  its records; the next flush resends them and the server, which scopes
  mutation ids by sender (the token, and `client_id` within it), reports those
  it applied as `duplicate` instead of writing them twice.
- `conflict` and `rejected` are held with the server's result (a conflict
  carries the server's current row) and not resent until `retry` or `discard`.
- An outbox file belongs to one sender: opened with another server, token or
  client id it refuses (OutboxError), since another sender's resend would not
  be recognised as a duplicate.

Unlike a page, a process has no `online` event: call `flush()` when it suits
(after `enqueue`, on a timer); flushes of one Outbox never overlap, and two
processes flushing one file are safe (the server answers `duplicate`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pgtide_client.client import AsyncClient, Client
from pgtide_client.errors import OutboxError
from pgtide_client.http import dumps

Op = Literal["insert", "update", "delete"]
BATCH = 200  # the server takes at most 1,000 mutations per push
WIRE = ("mutation_id", "resource", "op", "id", "data", "base_version", "base_etag", "client_ts")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq integer PRIMARY KEY AUTOINCREMENT,
    mutation_id text NOT NULL UNIQUE,
    resource text NOT NULL,
    op text NOT NULL,
    id text,
    data text,
    base_version integer,
    base_etag text,
    client_ts text NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    result text
);
CREATE TABLE IF NOT EXISTS outbox_meta (key text PRIMARY KEY, value text NOT NULL);
"""


@dataclass(frozen=True)
class Record:
    """A queued mutation: `state` is `pending`, `conflict` or `rejected` (with `result`)."""

    seq: int
    mutation_id: str
    resource: str
    op: str
    id: Any
    data: dict[str, Any] | None
    base_version: int | None
    base_etag: str | None
    client_ts: str
    state: str = "pending"
    result: dict[str, Any] | None = None

    def wire(self) -> dict[str, Any]:
        """The mutation as `POST /api/sync/push` takes it."""
        return {k: getattr(self, k) for k in WIRE if getattr(self, k) is not None}


@dataclass
class Flushed:
    """What one flush learnt: (result, record) pairs by outcome."""

    applied: list[tuple[dict[str, Any], Record]] = field(default_factory=list)
    conflicts: list[tuple[dict[str, Any], Record]] = field(default_factory=list)
    rejected: list[tuple[dict[str, Any], Record]] = field(default_factory=list)


class Store:
    """The queue's SQLite file."""

    def __init__(self, path: str | os.PathLike[str], sender: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.lock = threading.Lock()  # one connection, shared by the caller's threads
        try:
            self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" + SCHEMA)
            self._claim(sender, os.fspath(path))
        except BaseException:
            self.db.close()
            raise

    def _claim(self, sender: str, path: str) -> None:
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT value FROM outbox_meta WHERE key = 'sender'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO outbox_meta VALUES ('sender', ?)", (sender,))
            elif row[0] != sender:
                raise OutboxError(
                    f"{path} is the outbox of another sender (server, token or client_id): "
                    "its mutation ids would not be recognised as duplicates"
                )

    def add(self, r: Record) -> Record:
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute(
                "INSERT INTO outbox (mutation_id, resource, op, id, data, base_version,"
                " base_etag, client_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (r.mutation_id, r.resource, r.op, _json(r.id), _json(r.data), r.base_version,
                 r.base_etag, r.client_ts),
            )  # fmt: skip
            assert cur.lastrowid is not None
            return Record(**{**r.__dict__, "seq": cur.lastrowid})

    def records(self, state: str | None = None) -> list[Record]:
        query = "SELECT * FROM outbox" + (" WHERE state = ?" if state else "") + " ORDER BY seq"
        with self.lock:
            rows = self.db.execute(query, (state,) if state else ()).fetchall()
        return [_record(row) for row in rows]

    def settle(self, chunk: Sequence[Record], results: Iterable[dict[str, Any]]) -> Flushed:
        """Apply one push's answer in one transaction."""
        out = Flushed()
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for result in results:
                index = result.get("index")
                if not isinstance(index, int) or not 0 <= index < len(chunk):
                    continue
                record = chunk[index]
                if record.mutation_id != result.get("mutation_id"):
                    continue
                status = result.get("status")
                if status in ("applied", "duplicate"):
                    self.db.execute("DELETE FROM outbox WHERE seq = ?", (record.seq,))
                    out.applied.append((result, record))
                else:
                    self.db.execute("UPDATE outbox SET state = ?, result = ? WHERE seq = ?",
                                    (status, _json(result), record.seq))  # fmt: skip
                    kind = out.conflicts if status == "conflict" else out.rejected
                    kind.append((result, record))
        return out

    def update(self, mutation_id: str, change: Callable[[Record], Record | None]) -> None:
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(
                "SELECT * FROM outbox WHERE mutation_id = ?", (mutation_id,)
            ).fetchone()
            if row is None:
                raise KeyError(mutation_id)
            new = change(_record(row))
            if new is None:
                self.db.execute("DELETE FROM outbox WHERE mutation_id = ?", (mutation_id,))
                return
            self.db.execute(
                "UPDATE outbox SET id = ?, data = ?, base_version = ?, base_etag = ?,"
                " client_ts = ?, state = ?, result = ? WHERE mutation_id = ?",
                (_json(new.id), _json(new.data), new.base_version, new.base_etag,
                 new.client_ts, new.state, _json(new.result), mutation_id),
            )  # fmt: skip

    def close(self) -> None:
        self.db.close()


def _json(value: Any) -> str | None:
    return None if value is None else dumps(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _record(row: tuple[Any, ...]) -> Record:
    seq, mid, resource, op, id_, data, version, etag, ts, state, result = row
    return Record(seq, mid, resource, op, _load(id_), _load(data), version, etag, ts, state,
                  _load(result))  # fmt: skip


def sender_of(base_url: str, token: str | None, client_id: str | None) -> str:
    """Who the queue's mutation ids belong to, hashed (the token is not written down)."""
    text = f"{base_url.rstrip('/')}\n{token or ''}\n{client_id or ''}"
    return hashlib.sha256(text.encode()).hexdigest()


def new_record(
    resource: str, op: Op, id: Any, data: Mapping[str, Any] | None,
    base_version: int | None, base_etag: str | None,
) -> Record:  # fmt: skip
    """A mutation with its own id and time; an insert without an id gets one here."""
    if op not in ("insert", "update", "delete"):
        raise ValueError(f"op must be insert, update or delete, not {op!r}")
    body = dict(data) if data is not None else None
    if op == "insert" and id is None:
        id = body.get("id") if body and body.get("id") is not None else str(uuid.uuid4())
    if op == "insert" and body is not None and "id" not in body:
        body["id"] = id
    if op != "insert" and id is None:
        raise ValueError(f"an {op} needs the row's id")
    now = datetime.now(UTC).isoformat()
    return Record(0, str(uuid.uuid4()), resource, op, id, body, base_version, base_etag, now)


class _Queue:
    def __init__(
        self, path: str | os.PathLike[str], base_url: str, token: str | None,
        client_id: str | None, policy: str, batch: int,
    ) -> None:  # fmt: skip
        if policy not in ("version", "lww"):
            raise ValueError(f"policy must be version or lww, not {policy!r}")
        self.client_id, self.policy, self.batch = client_id, policy, batch
        self.store = Store(path, sender_of(base_url, token, client_id))

    def enqueue(
        self, resource: str, op: Op, *, id: Any = None, data: Mapping[str, Any] | None = None,
        base_version: int | None = None, base_etag: str | None = None,
    ) -> Record:  # fmt: skip
        """Queue a mutation; returns the stored record once it is on disk (nothing is sent)."""
        return self.store.add(new_record(resource, op, id, data, base_version, base_etag))

    def records(self) -> list[Record]:
        """Every queued mutation in the order made (the browser Outbox's `list()`)."""
        return self.store.records()

    def retry(self, mutation_id: str, **changes: Any) -> None:
        """Make a held mutation pending again, e.g. `retry(mid, base_version=4)`."""
        self.store.update(mutation_id, lambda r: Record(**{
            **r.__dict__, **changes, "state": "pending", "result": None}))  # fmt: skip

    def discard(self, mutation_id: str) -> None:
        """Drop a held (conflicting or rejected) mutation."""
        self.store.update(mutation_id, lambda r: None)

    def _chunks(self) -> list[list[Record]]:
        pending = self.store.records("pending")
        return [pending[i : i + self.batch] for i in range(0, len(pending), self.batch)]

    @staticmethod
    def _merge(total: Flushed, part: Flushed) -> None:
        total.applied += part.applied
        total.conflicts += part.conflicts
        total.rejected += part.rejected

    def close(self) -> None:
        self.store.close()


class Outbox(_Queue):
    """An offline queue for threads: `enqueue` now, `flush` when the server can be reached."""

    def __init__(
        self, path: str | os.PathLike[str], base_url: str, token: str | None = None, *,
        client_id: str | None = None, policy: str = "version", batch: int = BATCH,
        client: Client | None = None,
    ) -> None:  # fmt: skip
        super().__init__(path, base_url, token, client_id, policy, batch)
        self.client = client or Client(base_url, token)
        self._own = client is None
        self._flushing = threading.Lock()

    def flush(self) -> Flushed:
        """Send every pending mutation, in order, in batches.

        Raises Unavailable (or HTTPError) when a push fails as a whole; every
        record it did not settle stays queued, to be sent again.
        """
        with self._flushing:
            total = Flushed()
            for chunk in self._chunks():
                mutations = [r.wire() for r in chunk]
                results = self.client.push(mutations, client_id=self.client_id, policy=self.policy)
                self._merge(total, self.store.settle(chunk, results))
            return total

    def close(self) -> None:
        super().close()
        if self._own:
            self.client.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncOutbox(_Queue):
    """An offline queue for asyncio (its SQLite calls are short and run inline)."""

    def __init__(
        self, path: str | os.PathLike[str], base_url: str, token: str | None = None, *,
        client_id: str | None = None, policy: str = "version", batch: int = BATCH,
        client: AsyncClient | None = None,
    ) -> None:  # fmt: skip
        super().__init__(path, base_url, token, client_id, policy, batch)
        self.client = client or AsyncClient(base_url, token)
        self._own = client is None
        self._flushing = asyncio.Lock()

    async def flush(self) -> Flushed:
        """Send every pending mutation, in order, in batches (see Outbox.flush)."""
        async with self._flushing:
            total = Flushed()
            for chunk in self._chunks():
                mutations = [r.wire() for r in chunk]
                results = await self.client.push(
                    mutations, client_id=self.client_id, policy=self.policy
                )
                self._merge(total, self.store.settle(chunk, results))
            return total

    async def aclose(self) -> None:
        super().close()
        if self._own:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
