"""The write API's refusals: one exception carrying a status and problem members,
and the mapping of validation and PostgreSQL errors onto it.

    ApiError(status, detail, **members)      raised anywhere in a request, rendered once
    ├── from validation errors               422, each field path named
    └── from psycopg errors                  409 unique / referenced row, 422 check,
                                             not-null, foreign key and bad values,
                                             503 unreachable or contended database

Each problem+json document may carry extension members (RFC 9457 §3.2):
`errors` (field paths and messages), `index` (the failing element of an
array), `current` (the row as it is, with a 412).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

import psycopg
from psycopg import errors as pg
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api.problems import ProblemResponse, code_of
from api.queries import queries
from cdc.db import first_line
from cdc.errors import CursorError, FilterError

MAX_ERRORS = 50  # a body with thousands of bad fields gets a bounded answer

# Errors after which nothing was written and the same transaction may pass if run again.
RETRYABLE = (pg.SerializationFailure, pg.DeadlockDetected)

_KEY = re.compile(r"Key \((.+?)\)=")


class ApiError(Exception):
    """A request refused with `status`; `members` become problem+json extension members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **members: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.members = members

    def response(self) -> ProblemResponse:
        """The problem+json response (`type` about:blank, so `title` is the status phrase)."""
        body = {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
            "detail": self.detail,
            "code": code_of(self.status),
            **self.members,
        }
        return ProblemResponse(body, status_code=self.status, headers=self.headers)


def field_path(loc: Sequence[int | str]) -> str:
    """('items', 0, 'qty') → `items[0].qty`; () → `body`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def invalid(exc: ValidationError, *, prefix: Sequence[int | str] = ()) -> list[dict[str, Any]]:
    """A pydantic error as `[{field, message}]`, paths under `prefix` (never the input)."""
    return [
        {"field": field_path([*prefix, *e["loc"]]), "message": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ][:MAX_ERRORS]


def unprocessable(errors: list[dict[str, Any]], **members: Any) -> ApiError:
    """A 422 whose detail names the fields (the first few of them)."""
    shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return ApiError(422, f"invalid {shown}{more}", errors=errors, **members)


def database_error(exc: psycopg.Error, *, deleting: bool = False) -> ApiError | None:
    """The refusal for an error the input caused, or None for the server's own failures.

    `deleting`: a foreign key failing on DELETE means the row is still referenced (409),
    not that the body referenced a missing row (422).
    """
    diag = exc.diag
    constraint = diag.constraint_name or ""
    if isinstance(exc, pg.UniqueViolation):
        # The key's columns only, no constraint: a branch-pinned writer that hits another
        # branch's id gets the answer an id of its own branch gets, and learns nothing more.
        cols = _key_columns(diag.message_detail)
        return ApiError(409, f"a {diag.table_name} row with this {cols or 'key'} already exists")
    if isinstance(exc, pg.ForeignKeyViolation):
        if deleting:
            return ApiError(
                409,
                f"the row is still referenced from {diag.table_name} ({constraint}); "
                "delete or move the rows that reference it first",
                constraint=constraint,
            )
        return missing_reference(_key_columns(diag.message_detail) or constraint, constraint)
    if isinstance(exc, pg.NotNullViolation):
        errors = [{"field": diag.column_name or "body", "message": "must not be null"}]
        return unprocessable(errors)
    if isinstance(exc, pg.CheckViolation):
        # The field is filled in by `name_check_columns`, which needs a connection.
        errors = [{"field": constraint, "message": f"violates check constraint {constraint}"}]
        return unprocessable(errors, constraint=constraint)
    if isinstance(exc, pg.DataError):  # class 22: out of range, bad text, bad escape ...
        return ApiError(422, f"invalid value: {first_line(exc)}")
    if isinstance(exc, pg.SerializationFailure | pg.DeadlockDetected | pg.LockNotAvailable):
        return ApiError(503, "the database is busy with conflicting writes; retry",
                        headers={"Retry-After": "1"})  # fmt: skip
    if isinstance(exc, psycopg.OperationalError):
        return ApiError(503, "the database is unreachable; retry", headers={"Retry-After": "1"})
    return None


def missing_reference(columns: str, constraint: str) -> ApiError:
    """The 422 for a foreign key naming no row (for a branch-pinned writer: none of its branch)."""
    errors = [{"field": columns, "message": f"references a row that does not exist ({constraint})"}]
    return unprocessable(errors, constraint=constraint)


def _key_columns(message_detail: str | None) -> str | None:
    """`Key (branch_id, sku)=(…) already exists.` → `branch_id, sku`."""
    match = _KEY.search(message_detail or "")
    return match.group(1) if match else None


async def name_check_columns(
    conn: psycopg.AsyncConnection[Any], exc: psycopg.Error, error: ApiError
) -> ApiError:
    """Name the columns a violated CHECK covers (outside the failed transaction)."""
    diag = exc.diag
    if not isinstance(exc, pg.CheckViolation) or not diag.constraint_name:
        return error
    cur = await conn.execute(
        queries["constraint_columns"],
        {"constraint": diag.constraint_name, "schema": diag.schema_name or "public",
         "table": diag.table_name or ""},
    )  # fmt: skip
    row = await cur.fetchone()
    columns = row[0] if row and row[0] else None
    if not columns:
        return error
    errors = [{"field": c, "message": f"violates check constraint {diag.constraint_name}"}
              for c in columns]  # fmt: skip
    return unprocessable(errors, constraint=diag.constraint_name)


async def api_error(request: Request, exc: Exception) -> Response:
    """An ApiError raised anywhere in a route, as its problem+json."""
    assert isinstance(exc, ApiError)
    return exc.response()


async def bad_input(request: Request, exc: Exception) -> Response:
    """A filter, a cursor or a list parameter the request got wrong: 400."""
    return ApiError(400, str(exc)).response()


async def no_connection(request: Request, exc: Exception) -> Response:
    """The pool had no connection to give within its timeout: 503, retry."""
    return ApiError(503, "no database connection is free; retry",
                    headers={"Retry-After": "1"}).response()  # fmt: skip


# The one error path: every refusal a route can raise, mapped once (api/app.py registers
# them); routes raise, they do not catch and render.
HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    ApiError: api_error,
    FilterError: bad_input,
    CursorError: bad_input,
    PoolTimeout: no_connection,
}
