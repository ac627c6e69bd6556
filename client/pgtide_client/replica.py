"""Replica: the subscribed rows, by table and primary key, kept exact from the events.

`SNAPSHOT`, `INSERT` and `UPDATE` put the row; an UPDATE marked `left` (it took
the row out of the subscription's filters) and `DELETE` remove it; `TRUNCATE`
empties the table; `SnapshotStarted` and `Reset` empty everything (a snapshot
replaces, it does not merge); `MESSAGE` is ignored. The replica evaluates no
filter: the server says when a row leaves (docs/stream.md).

With a path, the rows and the cursor are kept in SQLite (stdlib `sqlite3`):
the rows an event changes and the cursor it moves to are committed together,
so a process killed at any point reopens a replica that is exact at its
cursor and resumes from there instead of taking a new snapshot. Rows of a
snapshot commit with the `synced` that ends it; a replica killed before that
has no cursor and starts over.

A subscription may apply events in one thread while others read: every
method takes the replica's lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

from pgtide_client.events import Change, Event, Reset, SnapshotStarted, Synced

Row = dict[str, Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS replica_rows (
    tbl text NOT NULL, pk text NOT NULL, row text NOT NULL, PRIMARY KEY (tbl, pk)
);
CREATE TABLE IF NOT EXISTS replica_meta (key text PRIMARY KEY, value text);
"""


def pk_key(pk: Mapping[str, Any]) -> str:
    """A stable key for a primary key object (column order does not matter)."""
    return json.dumps(sorted(pk.items()), separators=(",", ":"), default=str)


class Replica:
    """Rows per `schema.table` by primary key, and the cursor they are exact at."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._tables: dict[str, dict[str, Row]] = {}
        self._cursor: str | None = None
        self._signature: str | None = None
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        if path is not None:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + SCHEMA)
            self._load()

    def _load(self) -> None:
        assert self._db is not None
        for tbl, key, row in self._db.execute("SELECT tbl, pk, row FROM replica_rows"):
            self._tables.setdefault(tbl, {})[key] = json.loads(row)
        meta = dict(self._db.execute("SELECT key, value FROM replica_meta").fetchall())
        self._cursor, self._signature = meta.get("cursor"), meta.get("signature")

    # -- reading

    @property
    def cursor(self) -> str | None:
        """The position the rows are exact at (None: not synced yet)."""
        return self._cursor

    def tables(self) -> list[str]:
        """The `schema.table` names that hold rows."""
        with self._lock:
            return sorted(t for t, rows in self._tables.items() if rows)

    def rows(self, table: str) -> list[Row]:
        """The rows of `table` (`schema.table`, or a bare name held in one schema)."""
        with self._lock:
            return list(self._tables.get(self._name(table), {}).values())

    def get(self, table: str, pk: Mapping[str, Any]) -> Row | None:
        """One row by its primary key object (`{"id": ...}`)."""
        with self._lock:
            return self._tables.get(self._name(table), {}).get(pk_key(pk))

    def _name(self, table: str) -> str:
        if "." in table:
            return table
        found = [t for t in self._tables if t.partition(".")[2] == table]
        if len(found) > 1:
            raise ValueError(f"table {table!r} is held in several schemas: {sorted(found)}")
        return found[0] if found else f"public.{table}"

    # -- applying

    def bind(self, signature: str) -> None:
        """Follow this selection; rows built for another one are dropped (not resumed)."""
        with self._lock:
            self._bind(signature)

    def _bind(self, signature: str) -> None:
        if self._signature != signature:
            self.clear()
            self._signature = signature
            self._set_meta("signature", signature)
            self._commit()

    def apply(self, event: Event) -> None:
        """Apply one event of a subscription, in the order received."""
        with self._lock:
            self._apply(event)

    def _apply(self, event: Event) -> None:
        if isinstance(event, Change):
            self._apply_change(event)
            if event.cursor is not None:
                self._move(event.cursor)
        elif isinstance(event, Synced):
            self._move(event.cursor)
        elif isinstance(event, Reset):
            self.clear()
        elif isinstance(event, SnapshotStarted):
            self._clear(commit=False)  # committed with the `synced` that ends the snapshot

    def _apply_change(self, ev: Change) -> None:
        table = ev.qualified
        if ev.op == "TRUNCATE":
            self._tables.pop(table, None)
            self._exec("DELETE FROM replica_rows WHERE tbl = ?", (table,))
            return
        if ev.op not in ("SNAPSHOT", "INSERT", "UPDATE", "DELETE") or ev.pk is None:
            return  # MESSAGE
        key = pk_key(ev.pk)
        if ev.op == "UPDATE" and ev.old is not None:
            before = pk_key({k: ev.old.get(k) for k in ev.pk})
            if before != key:  # the primary key itself changed
                self._remove(table, before)
        if ev.op == "DELETE" or ev.left or ev.row is None:
            self._remove(table, key)
        else:
            self._tables.setdefault(table, {})[key] = ev.row
            self._exec(
                "INSERT OR REPLACE INTO replica_rows (tbl, pk, row) VALUES (?, ?, ?)",
                (table, key, json.dumps(ev.row, separators=(",", ":"))),
            )

    def _remove(self, table: str, key: str) -> None:
        self._tables.get(table, {}).pop(key, None)
        self._exec("DELETE FROM replica_rows WHERE tbl = ? AND pk = ?", (table, key))

    def _move(self, cursor: str) -> None:
        self._cursor = cursor
        self._set_meta("cursor", cursor)
        self._commit()

    def clear(self) -> None:
        """Forget every row and the cursor."""
        with self._lock:
            self._clear(commit=True)

    def _clear(self, *, commit: bool) -> None:
        self._tables.clear()
        self._cursor = None
        self._exec("DELETE FROM replica_rows", ())
        self._exec("DELETE FROM replica_meta WHERE key = 'cursor'", ())
        if commit:
            self._commit()

    # -- storage

    def _exec(self, query: str, params: tuple[Any, ...]) -> None:
        if self._db is None:
            return
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.execute(query, params)

    def _set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT OR REPLACE INTO replica_meta (key, value) VALUES (?, ?)", (key, value))

    def _commit(self) -> None:
        if self._db is not None and self._db.in_transaction:
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the file; what is not committed (a snapshot not yet synced) is dropped."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._db is not None:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.close()
            self._db = None

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
