"""The log reader: committed changes after a cursor, in `seq` order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import class_row

from cdc.cursor import Cursor
from cdc.queries import queries


@dataclass(frozen=True, slots=True)
class Change:
    """One sequenced change: a `sync_log` row with its `seq`."""

    seq: int
    id: int
    txid: str
    at: datetime
    schema_name: str
    table_name: str
    op: str
    pk: dict[str, Any] | None
    new_row: dict[str, Any] | None
    old_row: dict[str, Any] | None
    changed: list[str] | None
    actor: str | None
    origin: str | None
    mutation_id: str | None
    db_role: str


def read_after(conn: psycopg.Connection[Any], after: Cursor, limit: int = 1000) -> list[Change]:
    """The next at most `limit` changes with `seq > after`, in `seq` order."""
    with conn.cursor(row_factory=class_row(Change)) as cur:
        cur.execute(queries["read_after"], {"after": after, "limit": limit})
        return cur.fetchall()


async def aread_after(
    conn: psycopg.AsyncConnection[Any], after: Cursor, limit: int = 1000
) -> list[Change]:
    """Async twin of `read_after`."""
    async with conn.cursor(row_factory=class_row(Change)) as cur:
        await cur.execute(queries["read_after"], {"after": after, "limit": limit})
        return await cur.fetchall()


def head(conn: psycopg.Connection[Any]) -> Cursor:
    """The largest `seq` handed out so far (0 before the first)."""
    row = conn.execute(queries["head"]).fetchone()
    return Cursor(int(row[0]) if row else 0)
