"""The tracked tables and their columns' kinds, read from the database."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from cdc.errors import FilterError
from cdc.filters import TableInfo, kind_of, resolve_table
from cdc.queries import queries


async def load_catalog(conn: psycopg.AsyncConnection[Any]) -> dict[str, TableInfo]:
    """Tracked tables by `schema.table` (a name tracked in two schemas is there twice)."""
    cur = await conn.execute(queries["tracked_columns"])
    columns: dict[tuple[str, str], dict[str, str]] = {}
    pks: dict[tuple[str, str], tuple[str, ...]] = {}
    for schema, table, pk, column, type_name, category in await cur.fetchall():
        pks[(schema, table)] = tuple(pk)
        columns.setdefault((schema, table), {})[column] = kind_of(type_name, category)
    infos = (TableInfo(s, t, cols, pks[(s, t)]) for (s, t), cols in columns.items())
    return {info.qualified: info for info in infos}


def _resolves(tables: dict[str, TableInfo], name: str) -> bool:
    try:
        resolve_table(tables, name)
    except FilterError as exc:
        return "ambiguous" in str(exc)  # known, only badly named: no reload helps
    return True


class Catalog:
    """A cached catalog, reloaded when a request names a table it does not know yet."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self.tables: dict[str, TableInfo] | None = None

    async def get(self, wanted: Iterable[str] = ()) -> dict[str, TableInfo]:
        """The catalog, fresh if `wanted` names a table missing from the cached one."""
        if self.tables is None or not all(_resolves(self.tables, t) for t in wanted):
            async with self.pool.connection() as conn:
                self.tables = await load_catalog(conn)
        return self.tables
