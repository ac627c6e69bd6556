"""Audit reads: the sync-log listing with its filters, and one row's history. No HTTP.

The listing reads sequenced changes (`sync_order` joined to `sync_log`) in seq
order. Time filters are first turned into a seq range through the seals
(`seq_floor`, `seq_ceiling`), so a walk in seq order starts and stops near the
asked-for time; the filters themselves are then applied exactly. Parsing is
pure; the queries live in `cdc/audit.sql`. Each reading function has an async
twin for the HTTP layer's pool.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from cdc.cursor import MAX_CURSOR, parse_cursor
from cdc.errors import CursorError, FilterError
from cdc.filters import NUMBER, UUID, kind_of
from cdc.queries import load
from cdc.reader import Change
from cdc.timespec import parse_instant

audit_queries = load(Path(__file__).with_name("audit.sql"))

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
OPS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "MESSAGE")
PARAMS = ("table", "op", "pk", "actor", "origin", "txid", "from", "to", "after", "limit", "order")
_XID8_MAX = 2**64 - 1


@dataclass(frozen=True)
class LogQuery:
    """A checked sync-log query. `pk` is kept as written until the table's key is known."""

    tables: tuple[str, ...] | None = None
    ops: tuple[str, ...] | None = None
    pk: str | None = None
    actor: str | None = None
    origin: str | None = None
    txid: int | None = None
    start: datetime | None = None  # `from`, inclusive
    end: datetime | None = None  # `to`, exclusive
    after: int | None = None
    limit: int = DEFAULT_LIMIT
    descending: bool = False

    def to_params(self) -> dict[str, str]:
        """The query as request parameters (for `next` links); inverse of `parse_query`."""
        out: dict[str, str] = {}
        if self.tables:
            out["table"] = ",".join(self.tables)
        if self.ops:
            out["op"] = ",".join(o.lower() for o in self.ops)
        for name in ("pk", "actor", "origin"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.txid is not None:
            out["txid"] = str(self.txid)
        if self.start is not None:
            out["from"] = self.start.isoformat()
        if self.end is not None:
            out["to"] = self.end.isoformat()
        if self.after is not None:
            out["after"] = str(self.after)
        out["limit"] = str(self.limit)
        out["order"] = "desc" if self.descending else "asc"
        return out


@dataclass(frozen=True)
class Page:
    """One page of the listing; `next` is the cursor to pass as `after` for the next one."""

    changes: list[Change]
    next: int | None


def _names(value: str, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(","))
    if any(not v for v in items):
        raise FilterError(f"{what} must be a comma-separated list, got {value!r}")
    return items


def _one(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for name, value in items:
        if name not in PARAMS:
            raise FilterError(f"unknown parameter {name!r}: use {', '.join(PARAMS)}")
        if name in seen:
            raise FilterError(f"parameter {name!r} is given twice")
        seen[name] = value
    return seen


def parse_query(items: Iterable[tuple[str, str]]) -> LogQuery:
    """Check request parameters (name, value pairs); raise FilterError/CursorError."""
    p = _one(items)
    ops = None
    if "op" in p:
        ops = tuple(o.upper() for o in _names(p["op"], "op"))
        for o in ops:
            if o not in OPS:
                raise FilterError(f"unknown op {o.lower()!r}: use {', '.join(OPS).lower()}")
    for name in ("actor", "origin", "pk"):
        if name in p and p[name] == "":
            raise FilterError(f"{name} must not be empty")
    tables = _names(p["table"], "table") if "table" in p else None
    if "pk" in p and (tables is None or len(tables) != 1):
        raise FilterError("pk needs exactly one table (table=<name>)")
    txid = _number(p, "txid", _XID8_MAX, "a transaction id")
    start, end = _instant(p, "from"), _instant(p, "to")
    limit = _number(p, "limit", MAX_LIMIT, f"a number from 1 to {MAX_LIMIT}")
    if limit is not None and limit < 1:
        raise FilterError(f"limit must be from 1 to {MAX_LIMIT}, got {limit}")
    order = p.get("order", "asc").lower()
    if order not in ("asc", "desc"):
        raise FilterError(f"order must be asc or desc, got {p['order']!r}")
    return LogQuery(
        tables=tables,
        ops=ops,
        pk=p.get("pk"),
        actor=p.get("actor"),
        origin=p.get("origin"),
        txid=txid,
        start=start,
        end=end,
        after=parse_cursor(p["after"]) if "after" in p else None,
        limit=DEFAULT_LIMIT if limit is None else limit,
        descending=order == "desc",
    )


def _number(p: Mapping[str, str], name: str, maximum: int, what: str) -> int | None:
    if name not in p:
        return None
    text = p[name]
    if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) > maximum:
        raise FilterError(f"{name} must be {what}, got {text!r}")
    return int(text)


def _instant(p: Mapping[str, str], name: str) -> datetime | None:
    if name not in p:
        return None
    try:
        return parse_instant(p[name])
    except ValueError as exc:
        raise FilterError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Key:
    """A tracked table's key: (column, kind) in key order."""

    table: str
    columns: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _key_from_rows(table: str, rows: list[tuple[Any, ...]]) -> Key | None:
    if not rows:
        return None
    schema = rows[0][0]
    return Key(table, tuple((r[1], kind_of(r[2], r[3])) for r in rows if r[0] == schema))


def key_of(conn: psycopg.Connection[Any], table: str) -> Key | None:
    """The key of a tracked table (None: not tracked)."""
    rows = conn.execute(audit_queries["key_columns"], {"table": table}).fetchall()
    return _key_from_rows(table, rows)


async def akey_of(conn: psycopg.AsyncConnection[Any], table: str) -> Key | None:
    """Async twin of `key_of`."""
    cur = await conn.execute(audit_queries["key_columns"], {"table": table})
    return _key_from_rows(table, await cur.fetchall())


def _json_value(kind: str, text: str, where: str) -> Any:
    if kind == UUID:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise FilterError(f"{where}: {text!r} is not a uuid") from None
    if kind == NUMBER:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise FilterError(f"{where}: {text!r} is not a number")
        return value
    return text


def row_key(key: Key | None, table: str, raw: str) -> dict[str, Any]:
    """A row's key as logged (`sync_log.pk`) from `raw`: a JSON object, or a bare id.

    A bare id needs a tracked table with a one-column key; it is typed by that
    column (a number, a uuid in canonical form, else a string). In a JSON object,
    uuid values are put in canonical form too.
    """
    where = f"pk {raw!r} of {table}"
    if raw.lstrip().startswith("{"):
        try:
            value = json.loads(raw)
        except ValueError:
            raise FilterError(f"{where}: not valid JSON") from None
        if not isinstance(value, dict) or not value:
            raise FilterError(f"{where}: the key must be a non-empty JSON object")
        kinds = dict(key.columns) if key else {}
        return {
            k: _json_value(UUID, v, where) if kinds.get(k) == UUID and isinstance(v, str) else v
            for k, v in value.items()
        }
    if key is None:
        raise FilterError(
            f"{where}: {table} is not tracked, so its key columns are unknown; "
            'give the key as a JSON object, e.g. {"id": 1}'
        )
    if len(key.columns) != 1:
        cols = ", ".join(c for c, _ in key.columns)
        raise FilterError(f"{where}: {table}'s key has columns {cols}: give a JSON object")
    column, kind = key.columns[0]
    return {column: _json_value(kind, raw, where)}


def _list_sql(q: LogQuery) -> sql.Composed:
    direction = sql.SQL("DESC" if q.descending else "ASC")
    return sql.SQL(audit_queries["list"]).format(direction=direction)


def _list_params(
    q: LogQuery, pk: dict[str, Any] | None, floor: int | None, ceiling: int | None
) -> dict[str, Any]:
    lo = 0 if floor is None else floor
    hi = MAX_CURSOR if ceiling is None else ceiling
    if q.after is not None:
        if q.descending:
            hi = min(hi, q.after)
        else:
            lo = max(lo, q.after)
    return {
        "lo": lo,
        "hi": hi,
        "tables": list(q.tables) if q.tables else None,
        "ops": list(q.ops) if q.ops else None,
        "pk": Jsonb(pk) if pk is not None else None,
        "actor": q.actor,
        "origin": q.origin,
        "txid": str(q.txid) if q.txid is not None else None,
        "from": q.start,
        "to": q.end,
        "limit": q.limit + 1,  # one more, to know whether there is a next page
    }


def _page(rows: list[Change], q: LogQuery) -> Page:
    if len(rows) > q.limit:
        return Page(rows[: q.limit], rows[q.limit - 1].seq)
    return Page(rows, None)


def _scalar(row: tuple[Any, ...] | None) -> int | None:
    return None if row is None or row[0] is None else int(row[0])


def list_changes(conn: psycopg.Connection[Any], q: LogQuery) -> Page:
    """One page of sequenced changes matching `q`, in seq order."""
    pk = row_key(key_of(conn, q.tables[0]), q.tables[0], q.pk) if q.pk and q.tables else None
    floor = ceiling = None
    if q.start is not None:
        floor = _scalar(conn.execute(audit_queries["seq_floor"], {"at": q.start}).fetchone())
        if floor is None:
            return Page([], None)  # no seal that late: nothing at or after `from`
    if q.end is not None:
        ceiling = _scalar(conn.execute(audit_queries["seq_ceiling"], {"at": q.end}).fetchone())
    with conn.cursor(row_factory=class_row(Change)) as cur:
        # Unprepared: planned with the values, so absent filters fold away (audit.sql).
        cur.execute(_list_sql(q), _list_params(q, pk, floor, ceiling), prepare=False)
        return _page(cur.fetchall(), q)


async def alist_changes(conn: psycopg.AsyncConnection[Any], q: LogQuery) -> Page:
    """Async twin of `list_changes`."""
    pk = None
    if q.pk and q.tables:
        pk = row_key(await akey_of(conn, q.tables[0]), q.tables[0], q.pk)
    floor = ceiling = None
    if q.start is not None:
        cur = await conn.execute(audit_queries["seq_floor"], {"at": q.start})
        floor = _scalar(await cur.fetchone())
        if floor is None:
            return Page([], None)
    if q.end is not None:
        cur = await conn.execute(audit_queries["seq_ceiling"], {"at": q.end})
        ceiling = _scalar(await cur.fetchone())
    async with conn.cursor(row_factory=class_row(Change)) as ccur:
        await ccur.execute(_list_sql(q), _list_params(q, pk, floor, ceiling), prepare=False)
        return _page(await ccur.fetchall(), q)


@dataclass(frozen=True)
class HistoryEntry:
    """One change in a row's history: the change and, per column, (before, after)."""

    change: Change
    diff: dict[str, tuple[Any, Any]]


def _ordered(columns: Iterable[str]) -> list[str]:
    return sorted(columns)  # code-point order, as capture orders `changed`


def build_history(changes: Iterable[Change]) -> list[HistoryEntry]:
    """The row's story from its changes (and its table's TRUNCATEs), in seq order.

    INSERT: every column from nothing; UPDATE: the changed columns; DELETE: every
    column to nothing; a TRUNCATE is kept only when the row was present then, and
    shows its last known values going to nothing.
    """
    out: list[HistoryEntry] = []
    current: dict[str, Any] | None = None
    for c in changes:
        if c.op == "TRUNCATE":
            if current is None:
                continue
            diff = {k: (current[k], None) for k in _ordered(current)}
            current = None
        elif c.op == "INSERT":
            row = c.new_row or {}
            diff = {k: (None, row[k]) for k in _ordered(row)}
            current = row
        elif c.op == "UPDATE":
            new, old = c.new_row or {}, c.old_row or {}
            diff = {k: (old.get(k), new.get(k)) for k in _ordered(c.changed or ())}
            current = new
        else:  # DELETE
            row = c.old_row or {}
            diff = {k: (row[k], None) for k in _ordered(row)}
            current = None
        out.append(HistoryEntry(c, diff))
    return out


def history(conn: psycopg.Connection[Any], table: str, pk: dict[str, Any]) -> list[HistoryEntry]:
    """Every sequenced change of one row (by table and key), oldest first."""
    with conn.cursor(row_factory=class_row(Change)) as cur:
        cur.execute(audit_queries["history"], {"table": table, "pk": Jsonb(pk)})
        return build_history(cur.fetchall())


async def ahistory(
    conn: psycopg.AsyncConnection[Any], table: str, pk: dict[str, Any]
) -> list[HistoryEntry]:
    """Async twin of `history`."""
    async with conn.cursor(row_factory=class_row(Change)) as cur:
        await cur.execute(audit_queries["history"], {"table": table, "pk": Jsonb(pk)})
        return build_history(await cur.fetchall())


def change_record(c: Change) -> dict[str, Any]:
    """A change as the audit outputs show it (the stream's field names, plus db_role)."""
    return {
        "cursor": str(c.seq),
        "seq": c.seq,
        "txid": c.txid,
        "id": c.id,
        "at": c.at,
        "schema": c.schema_name,
        "table": c.table_name,
        "op": c.op,
        "pk": c.pk,
        "row": c.new_row,
        "old": c.old_row,
        "changed": c.changed,
        "actor": c.actor,
        "origin": c.origin,
        "mutation_id": c.mutation_id,
        "db_role": c.db_role,
    }


def history_record(e: HistoryEntry) -> dict[str, Any]:
    """A history entry as JSON: when, who, and `changes` {column: {before, after}}."""
    c = e.change
    return {
        "cursor": str(c.seq),
        "seq": c.seq,
        "txid": c.txid,
        "at": c.at,
        "op": c.op,
        "actor": c.actor,
        "origin": c.origin,
        "mutation_id": c.mutation_id,
        "db_role": c.db_role,
        "changed": list(e.diff),
        "changes": {k: {"before": b, "after": a} for k, (b, a) in e.diff.items()},
    }


__all__ = [
    "MAX_LIMIT",
    "CursorError",
    "FilterError",
    "HistoryEntry",
    "Key",
    "LogQuery",
    "Page",
    "ahistory",
    "akey_of",
    "alist_changes",
    "build_history",
    "change_record",
    "history",
    "history_record",
    "key_of",
    "list_changes",
    "parse_query",
    "row_key",
]
