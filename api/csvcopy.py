"""CSV import, the database part: stream prepared COPY data into a resource's table.

`COPY table (columns) FROM STDIN` in the caller's transaction, with only the
header's columns, so the table's defaults fill the others; the capture
trigger fires for every row as it does for INSERT, so each row reaches
pgtide.sync_log with the transaction's author. A refusal that PostgreSQL raises
while copying names the COPY line in its context (`COPY clients, line 12`),
which `failed_line` turns back into the CSV line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from api.csvcells import copy_text
from api.csvimport import Prepared
from api.errors import ApiError
from api.queries import queries

CHUNK = 256 * 1024  # bytes per write to the COPY stream

_COPY_LINE = re.compile(r"^COPY [^,]+, line (\d+)", re.MULTILINE)
_KEY = re.compile(r"^Key \(([^,()]+)\)=\((.*)\) is not present", re.DOTALL)


def table_of(res: Any) -> sql.Composable:
    """The resource's table, schema-qualified."""
    identifier: sql.Composable = res.identifier
    return identifier


def statement(res: Any, columns: tuple[str, ...]) -> sql.Composed:
    """`COPY table (columns) FROM STDIN` (text format)."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    return sql.SQL("COPY {} ({}) FROM STDIN").format(table_of(res), cols)


async def copy_in(
    conn: psycopg.AsyncConnection[Any], res: Any, prepared: Prepared,
    progress: Callable[[int], None] | None = None,
) -> None:  # fmt: skip
    """COPY the prepared rows into `res`'s table, in the caller's transaction.

    The data is read from its start, so a retried transaction copies it again.
    `progress` is called with the bytes sent so far.
    """
    prepared.data.seek(0)
    sent = 0
    # An import is one long statement by design (bounded by PGTIDE_IMPORT_MAX_BYTES, and
    # validated before the connection was taken): the API's statement timeout is not for it.
    await conn.execute(queries["no_statement_timeout"])
    async with conn.cursor() as cur, cur.copy(statement(res, prepared.columns)) as copy:
        while chunk := prepared.data.read(CHUNK):
            await copy.write(chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent)


def failed_line(exc: BaseException, prepared: Prepared) -> int | None:
    """The CSV line of the record PostgreSQL refused, when its error says (else None).

    A foreign key is checked at the end of the statement, without a COPY line:
    the record is then found by the key value its detail names (one column).
    """
    diag = getattr(exc, "diag", None)
    match = _COPY_LINE.search(getattr(diag, "context", None) or "")
    if match is not None:
        return prepared.line_of(int(match.group(1)) - 1)
    key = _KEY.search(getattr(diag, "message_detail", None) or "")
    if key is None or key.group(1) not in prepared.columns:
        return None
    return _find(prepared, prepared.columns.index(key.group(1)), copy_text(key.group(2)))


def _find(prepared: Prepared, column: int, cell: str) -> int | None:
    """The line of the first record whose `column` is `cell` (a scan: refused imports only)."""
    prepared.data.seek(0)
    for index, row in enumerate(prepared.data):
        if row.rstrip(b"\n").decode().split("\t")[column] == cell:
            return prepared.line_of(index)
    return None


def with_line(error: ApiError, line: int | None) -> ApiError:
    """`error` with the record's line in its detail, `line` and each of its `errors`."""
    if line is None:
        return error
    members = dict(error.members)
    if isinstance(members.get("errors"), list):
        members["errors"] = [{"line": line, **e} for e in members["errors"]]
    members["line"] = line
    return ApiError(error.status, f"line {line}: {error.detail}", headers=error.headers,
                    **members)  # fmt: skip
