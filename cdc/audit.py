"""Audit reads: the sync-log listing with its filters, and one row's history. No HTTP.

The listing reads sequenced changes (`pgtide.sync_order` joined to `pgtide.sync_log`) in seq
order; its parameters are checked by the pure `cdc/logquery.py`. Time filters
are first turned into a seq range through the seals (`seq_floor`,
`seq_ceiling`), so a walk in seq order starts and stops near the asked-for
time; the filters themselves are then applied exactly. The queries live in
`cdc/audit.sql`. Each reading function has an async twin for the HTTP pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from cdc.cursor import MAX_CURSOR
from cdc.events import change_payload
from cdc.filters import kind_of
from cdc.logquery import MAX_LIMIT, Key, LogQuery, parse_query, row_key
from cdc.queries import load
from cdc.reader import Change

audit_queries = load(Path(__file__).with_name("audit.sql"))


@dataclass(frozen=True)
class Page:
    """One page of the listing; `next_cursor` is the `after` of the next one (None: the last)."""

    changes: list[Change]
    next_cursor: int | None


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
    with conn.transaction(), conn.cursor(row_factory=class_row(Change)) as cur:
        cur.execute(audit_queries["serial_plans"])
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
    async with conn.transaction(), conn.cursor(row_factory=class_row(Change)) as ccur:
        await ccur.execute(audit_queries["serial_plans"])
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
    """A change as the audit outputs show it (the stream's fields, plus db_role)."""
    # `at` stays a datetime here: the table, CSV and JSON writers format it themselves.
    return {**change_payload(c), "at": c.at, "db_role": c.db_role}


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
