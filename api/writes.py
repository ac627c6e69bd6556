"""Row writes on a connection inside the caller's transaction, and who they are recorded as.

Every write transaction starts with `begin`, which sets `pgtide.actor`,
`pgtide.origin` and `pgtide.mutation_id` for the capture trigger (transaction
local) and returns the transaction id its changes carry on the stream.
Conditional writes take the accepted ETags and match nothing when the row is
missing or its ETag differs; `refusal` then says which (404 or 412).
Every row access takes `branch`: for a branch-pinned token, rows of other
branches do not exist (404), whatever the request names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from api.errors import ApiError
from api.models import Resource
from api.queries import queries

Row = dict[str, Any]


@dataclass(frozen=True)
class Author:
    """Who a write is recorded as in pgtide.sync_log (None: not recorded)."""

    actor: str | None
    origin: str | None
    mutation_id: str | None = None


async def announce(conn: psycopg.AsyncConnection[Any], author: Author) -> psycopg.AsyncCursor[Any]:
    """Record the author for this transaction's changes; `txid_of` reads its txid.

    In pipeline mode the statement is only queued: its answer arrives with that of
    the write that follows it, in the same round trip.
    """
    return await conn.execute(
        queries["begin_write"],
        {"actor": author.actor or "", "origin": author.origin or "",
         "mutation_id": author.mutation_id or ""},
    )  # fmt: skip


async def txid_of(announced: psycopg.AsyncCursor[Any]) -> str:
    """The transaction id an `announce` returned (as text)."""
    row = await announced.fetchone()
    assert row is not None
    return str(row[3])


async def begin(conn: psycopg.AsyncConnection[Any], author: Author) -> str:
    """Record the author for this transaction's changes; return its txid (as text)."""
    return await txid_of(await announce(conn, author))


@dataclass(frozen=True)
class Done:
    """What a write's work answers: its status, its `data` and headers (the txid is added
    by whoever ran the transaction, once the write's answer has come)."""

    status: int
    data: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stored:
    """A row as stored: its JSON image and its ETag (unquoted)."""

    row: Row
    tag: str

    @property
    def etag(self) -> str:
        """The ETag header's value: the tag, quoted (strong)."""
        return f'"{self.tag}"'


def _pin(res: Resource, branch: Any) -> sql.Composable:
    if branch is None:
        return sql.SQL("")
    assert res.tenant is not None  # identity.branch_pin pins only resources with a tenant
    return sql.SQL("AND {} = %(branch)s").format(sql.Identifier("t", res.tenant))


def _format(name: str, res: Resource, branch: Any, **parts: sql.Composable) -> sql.Composed:
    return sql.SQL(queries[name]).format(
        table=res.identifier, key=sql.Identifier(res.key), etag=res.etag_sql(),
        pin=_pin(res, branch), **parts,
    )  # fmt: skip


# Statements composed once per resource and shape, kept as the bytes psycopg sends:
# composing them per request cost about 5 % of a server's CPU (docs/benchmarks.md).
MAX_SHAPES = 512  # per resource (a PATCH's columns vary); beyond, composed each time


def _statement(res: Resource, shape: tuple[Any, ...], build: Callable[[], sql.Composed]) -> bytes:
    found = res.statements.get(shape)
    if found is None:
        found = build().as_bytes(None)
        if len(res.statements) < MAX_SHAPES:
            res.statements[shape] = found
    return found


async def _one(
    conn: psycopg.AsyncConnection[Any], query: bytes | sql.Composed, params: dict[str, Any]
) -> Stored | None:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else Stored(dict(row[0]), row[1])


async def fetch(
    conn: psycopg.AsyncConnection[Any], res: Resource, id: Any, branch: Any
) -> Stored | None:
    """The row `id` of `res` with its ETag, or None."""
    query = _statement(res, ("select_row", branch is not None),
                       lambda: _format("select_row", res, branch))  # fmt: skip
    return await _one(conn, query, {"id": id, "branch": branch})


def _written(res: Resource) -> sql.Composable:
    """When a row was last written: its updated_at, or the log's last change of it."""
    if "updated_at" in res.server_set:
        return sql.Identifier("t", "updated_at")
    return sql.SQL(queries["last_logged_at"]).format(key=sql.Identifier(res.key))


async def lock(
    conn: psycopg.AsyncConnection[Any], res: Resource, id: Any, branch: Any
) -> tuple[Stored, Any] | None:
    """The row locked until the transaction ends, with when it was last written."""
    query = _statement(res, ("lock_row", branch is not None),
                       lambda: _format("lock_row", res, branch, written=_written(res)))  # fmt: skip
    params = {"id": id, "branch": branch, "table_name": res.table_name,
              "schema_name": res.schema_name, "key_name": res.key}  # fmt: skip
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else (Stored(dict(row[0]), row[1]), row[2])


def _insert(res: Resource, columns: tuple[str, ...]) -> bytes:
    return _statement(res, ("insert_row", columns), lambda: _compose_insert(res, columns))


def _compose_insert(res: Resource, columns: tuple[str, ...]) -> sql.Composed:
    if not columns:  # every column takes its default
        template = queries["insert_row"].replace("({columns}) VALUES ({values})", "DEFAULT VALUES")
        return sql.SQL(template).format(table=res.identifier, etag=res.etag_sql())
    return sql.SQL(queries["insert_row"]).format(
        table=res.identifier,
        etag=res.etag_sql(),
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        values=sql.SQL(", ").join(sql.Placeholder(f"c_{c}") for c in columns),
    )


async def insert(conn: psycopg.AsyncConnection[Any], res: Resource, values: Row) -> Stored:
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
) -> list[Stored]:
    """Insert rows in order, in the caller's transaction; RowFailed names a refused one.

    The inserts are pipelined (one round trip, not one per row). A pipeline does
    not tell which statement failed, so after a refusal the rows are inserted
    again one by one to find it; only refused requests pay for that.
    """
    by_columns: dict[tuple[str, ...], bytes] = {}
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
                out.append(Stored(dict(row[0]), row[1]))
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
    id: Any,
    values: Row,
    tags: list[str] | None,
    branch: Any,
    *,
    replace: bool = False,
) -> Stored | None:
    """Set `values` on row `id` if its ETag is in `tags` (None: any).

    `replace` (PUT) sets every writable column the values leave out to its
    default. An update that changes nothing still locks and checks the row,
    but the table keeps its version and pgtide.sync_log gets no entry.
    """
    sets: list[sql.Composable] = [
        sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(f"c_{c}")) for c in values
    ]
    if replace:
        sets += [sql.SQL("{} = DEFAULT").format(sql.Identifier(c))
                 for c in res.writable if c not in values]  # fmt: skip
    if not sets:  # an empty PATCH: lock and check the row, change nothing
        sets = [sql.SQL("{} = t.{}").format(sql.Identifier(res.key), sql.Identifier(res.key))]
    shape = ("update_row", branch is not None, tuple(values), replace)
    query = _statement(res, shape, lambda: _format("update_row", res, branch,
                                              assignments=sql.SQL(", ").join(sets)))  # fmt: skip
    params = {f"c_{c}": v for c, v in values.items()}
    return await _one(conn, query, {**params, "id": id, "tags": tags, "branch": branch})


async def delete(
    conn: psycopg.AsyncConnection[Any],
    res: Resource,
    id: Any,
    tags: list[str] | None,
    branch: Any,
) -> Stored | None:
    """Delete row `id` if its ETag is in `tags` (None: any); the deleted row."""
    params = {"id": id, "tags": tags, "branch": branch}
    query = _statement(res, ("delete_row", branch is not None),
                       lambda: _format("delete_row", res, branch))  # fmt: skip
    return await _one(conn, query, params)


async def refusal(
    conn: psycopg.AsyncConnection[Any], res: Resource, id: Any, branch: Any
) -> ApiError:
    """Why a conditional write matched nothing: 404 (no such row) or 412 (stale ETag)."""
    current = await fetch(conn, res, id, branch)
    if current is None:
        return missing(res, id)
    now = f"is at version {current.row[res.version]}" if res.version else "has changed"
    return ApiError(
        412,
        f"{res.name} {id} {now}, not the one If-Match names",
        headers={"ETag": current.etag},
        current=current.row,
    )


def missing(res: Resource, id: Any) -> ApiError:
    """The 404 for a row that does not exist (or no longer does)."""
    return ApiError(404, f"no {res.name} row with {res.key} {id}")
