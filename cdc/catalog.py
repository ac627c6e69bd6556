"""The tracked tables and their columns' kinds, read from the database."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from cdc.filters import TableInfo, kind_of
from cdc.queries import queries


async def load_catalog(conn: psycopg.AsyncConnection[Any]) -> dict[str, TableInfo]:
    """Tracked tables by name (a name tracked in two schemas keeps the first, by schema)."""
    cur = await conn.execute(queries["tracked_columns"])
    tables: dict[str, dict[str, str]] = {}
    schemas: dict[str, str] = {}
    pks: dict[str, tuple[str, ...]] = {}
    for schema, table, pk, column, type_name, category in await cur.fetchall():
        if schemas.setdefault(table, schema) != schema:
            continue
        pks[table] = tuple(pk)
        tables.setdefault(table, {})[column] = kind_of(type_name, category)
    return {t: TableInfo(schemas[t], t, cols, pks[t]) for t, cols in tables.items()}


class Catalog:
    """A cached catalog, reloaded when a request names a table it does not know yet."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self.tables: dict[str, TableInfo] | None = None

    async def get(self, wanted: Iterable[str] = ()) -> dict[str, TableInfo]:
        """The catalog, fresh if `wanted` names a table missing from the cached one."""
        if self.tables is None or any(t not in self.tables for t in wanted):
            async with self.pool.connection() as conn:
                self.tables = await load_catalog(conn)
        return self.tables
