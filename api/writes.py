"""Row writes on a connection inside the caller's transaction, and who they are recorded as.

Every write transaction starts with `begin`, which sets `pgtide.actor`,
`pgtide.origin` and `pgtide.mutation_id` for the capture trigger (transaction
local) and returns the transaction id its changes carry on the stream.
Conditional writes take the accepted versions and match nothing when the row
is missing or its version differs; `refusal` then says which (404 or 412).
Every row access takes `branch`: for a branch-pinned token, rows of other
branches do not exist (404), whatever the request names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from api.errors import ApiError
from api.models import Resource
from api.queries import queries

Row = dict[str, Any]


@dataclass(frozen=True)
class Author:
    """Who a write is recorded as in sync_log (None: not recorded)."""

    actor: str | None
    origin: str | None
    mutation_id: str | None = None


async def begin(conn: psycopg.AsyncConnection[Any], author: Author) -> str:
    """Record the author for this transaction's changes; return its txid (as text)."""
    cur = await conn.execute(
        queries["begin_write"],
        {"actor": author.actor or "", "origin": author.origin or "",
         "mutation_id": author.mutation_id or ""},
    )  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    return str(row[3])


def _table(res: Resource) -> sql.Composable:
    return sql.Identifier("public", res.name)


def _format(name: str, res: Resource, branch: UUID | None, **parts: sql.Composable) -> sql.Composed:
    pin = sql.SQL("AND t.branch_id = %(branch)s") if branch is not None else sql.SQL("")
    return sql.SQL(queries[name]).format(table=_table(res), pin=pin, **parts)


async def _one(
    conn: psycopg.AsyncConnection[Any], query: sql.Composed, params: dict[str, Any]
) -> Row | None:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else dict(row[0])


async def fetch(
    conn: psycopg.AsyncConnection[Any], res: Resource, id: UUID, branch: UUID | None
) -> Row | None:
    """The row `id` of `res` as its JSON image, or None."""
    return await _one(conn, _format("select_row", res, branch), {"id": id, "branch": branch})


async def lock(
    conn: psycopg.AsyncConnection[Any], res: Resource, id: UUID, branch: UUID | None
) -> tuple[Row, int, Any] | None:
    """The row locked until the transaction ends, with its version and updated_at."""
    cur = await conn.execute(_format("lock_row", res, branch), {"id": id, "branch": branch})
    row = await cur.fetchone()
    return None if row is None else (dict(row[0]), row[1], row[2])


def _insert(res: Resource, columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(queries["insert_row"]).format(
        table=_table(res),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        values=sql.SQL(", ").join(sql.Placeholder(f"c_{c}") for c in columns),
    )


async def insert(conn: psycopg.AsyncConnection[Any], res: Resource, values: Row) -> Row:
    """Insert one row (`values` by column; the table's defaults fill the rest)."""
    row = await _one(conn, _insert(res, tuple(values)), {f"c_{c}": v for c, v in values.items()})
    assert row is not None  # INSERT ... RETURNING returns the row or raises
    return row


class RowFailed(Exception):
    """The database refused row `index` of a multi-row write."""

    def __init__(self, index: int, error: psycopg.Error) -> None:
        super().__init__(str(error))
        self.index, self.error = index, error


async def insert_many(
    conn: psycopg.AsyncConnection[Any], res: Resource, rows: list[Row]
) -> list[Row]:
    """Insert rows in order, in the caller's transaction; RowFailed names a refused one.

    The inserts are pipelined (one round trip, not one per row). A pipeline does
    not tell which statement failed, so after a refusal the rows are inserted
    again one by one to find it; only refused requests pay for that.
    """
    by_columns: dict[tuple[str, ...], sql.Composed] = {}
    try:
        async with conn.transaction():  # a savepoint, so the replay below can run
            async with conn.pipeline():
                cursors = []
                for values in rows:
                    query = by_columns.setdefault(tuple(values), _insert(res, tuple(values)))
                    params = {f"c_{c}": v for c, v in values.items()}
                    cursors.append(await conn.execute(query, params))
            out = []
            for cur in cursors:
                row = await cur.fetchone()
                assert row is not None
                out.append(dict(row[0]))
            return out
    except (psycopg.IntegrityError, psycopg.DataError):
        pass  # some row was refused: find which
    async with conn.transaction():
        out = []
        for index, values in enumerate(rows):
            try:
                out.append(await insert(conn, res, values))
            except psycopg.Error as exc:
                raise RowFailed(index, exc) from exc
        return out  # the refusal is gone (a concurrent write changed): the rows are in


async def update(
    conn: psycopg.AsyncConnection[Any],
    res: Resource,
    id: UUID,
    values: Row,
    versions: list[int] | None,
    branch: UUID | None,
    *,
    replace: bool = False,
) -> Row | None:
    """Set `values` on row `id` if its version is in `versions` (None: any).

    `replace` (PUT) sets every writable column the values leave out to its
    default. An update that changes nothing still locks and checks the row,
    but the table keeps its version and sync_log gets no entry.
    """
    sets: list[sql.Composable] = [
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(f"c_{c}")) for c in values
    ]
    if replace:
        sets += [sql.SQL("{} = DEFAULT").format(sql.Identifier(c))
                 for c in res.writable if c not in values]  # fmt: skip
    if not sets:  # an empty PATCH: lock and check the row, change nothing
        sets = [sql.SQL("id = t.id")]
    query = _format("update_row", res, branch, assignments=sql.SQL(", ").join(sets))
    params = {f"c_{c}": v for c, v in values.items()}
    return await _one(conn, query, {**params, "id": id, "versions": versions, "branch": branch})


async def delete(
    conn: psycopg.AsyncConnection[Any],
    res: Resource,
    id: UUID,
    versions: list[int] | None,
    branch: UUID | None,
) -> Row | None:
    """Delete row `id` if its version is in `versions` (None: any); the deleted row."""
    params = {"id": id, "versions": versions, "branch": branch}
    return await _one(conn, _format("delete_row", res, branch), params)


async def refusal(
    conn: psycopg.AsyncConnection[Any], res: Resource, id: UUID, branch: UUID | None
) -> ApiError:
    """Why a conditional write matched nothing: 404 (no such row) or 412 (stale version)."""
    current = await fetch(conn, res, id, branch)
    if current is None:
        return missing(res, id)
    return ApiError(
        412,
        f"{res.name} {id} is at version {current['version']}, not the one If-Match names",
        headers={"ETag": etag(current)},
        current=current,
    )


def missing(res: Resource, id: UUID | str) -> ApiError:
    """The 404 for a row that does not exist (or no longer does)."""
    return ApiError(404, f"no {res.name} row with id {id}")


def etag(row: Row) -> str:
    """The strong ETag of a row: its version, quoted."""
    return f'"{row["version"]}"'
