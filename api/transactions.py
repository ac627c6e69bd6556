"""One write transaction, run again while the database says it may pass if run again.

Every write of the API goes through `run`: the resource routes (a pooled
connection per attempt, refusals raised as ApiError), the CSV import (the same)
and the offline push (one connection for the whole push, a refusal becoming the
mutation's `rejected` result). What differs is a parameter:

    run(connect, work)                    a connection per attempt, work(conn) in a transaction
    ├── deadlock, serialisation failure   rolled back, run again (ATTEMPTS in all), then 503
    ├── other database errors             mapped once (api/errors.py), raised or given to `refused`
    └── commit(result) is False           rolled back, the result returned all the same
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import psycopg

from api.errors import RETRYABLE, ApiError, database_error, name_check_columns
from api.writes import RowFailed

ATTEMPTS = 3  # deadlocks and serialisation failures are retried, then 503

Conn = psycopg.AsyncConnection[Any]
Connect = Callable[[], AbstractAsyncContextManager[Conn]]
Failure = psycopg.Error | RowFailed
T = TypeVar("T")


def cause(raised: Failure) -> psycopg.Error:
    """The database's error behind a failure (a refused row of an array carries one)."""
    return raised.error if isinstance(raised, RowFailed) else raised


def _always(result: object) -> bool:
    return True


async def run(
    connect: Connect,
    work: Callable[[Conn], Awaitable[T]],
    *,
    deleting: bool = False,
    refused: Callable[[ApiError], T] | None = None,
    commit: Callable[[T], bool] = _always,
    attempts: int = ATTEMPTS,
    pipeline: bool = False,
) -> T:
    """Run `work` in one transaction on a connection from `connect`; return its result.

    A deadlock or serialisation failure rolls back and runs `work` again (nothing
    was written), on a connection from `connect` again, `attempts` times in all.
    Any other database error, or the last retryable one, is mapped to an ApiError
    (`deleting`: see api.errors.database_error) once the transaction is rolled back,
    on the same connection. The database's own failures (503) are raised; a refusal
    of the input is given to `refused`, whose result is returned, or raised without
    one. An error that maps to nothing (a bug) is raised as it is. `commit` may
    decline a result (a push's conflict): its transaction is rolled back and the
    result returned all the same. `pipeline`: the attempt runs in pipeline mode, so
    statements whose answers `work` does not wait for share a round trip (BEGIN, the
    author, the write; then COMMIT).
    """
    for attempt in range(1, attempts + 1):
        async with connect() as conn:
            try:
                if pipeline:
                    async with conn.pipeline():
                        return await _once(conn, work, commit)
                return await _once(conn, work, commit)
            except (psycopg.Error, RowFailed) as raised:
                if isinstance(cause(raised), RETRYABLE) and attempt < attempts:
                    continue  # nothing was written; the next attempt may pass
                error = await refusal(conn, raised, deleting=deleting)
                if error is None:
                    raise
                if refused is None or error.status >= 500:
                    raise error from cause(raised)
                return refused(error)
    raise AssertionError("unreachable")  # the last attempt returns or raises


async def _once(conn: Conn, work: Callable[[Conn], Awaitable[T]], commit: Callable[[T], bool]) -> T:
    async with conn.transaction() as tx:
        result = await work(conn)
        if not commit(result):
            raise psycopg.Rollback(tx)  # leaves the `async with` quietly, rolled back
    return result


async def refusal(conn: Conn, raised: Failure, *, deleting: bool = False) -> ApiError | None:
    """The ApiError for a failed write, its CHECK columns named (None: not the input's fault)."""
    exc = cause(raised)
    error = database_error(exc, deleting=deleting)
    if error is None:
        return None
    error = await name_check_columns(conn, exc, error)
    if isinstance(raised, RowFailed):
        error = ApiError(error.status, f"element {raised.index}: {error.detail}",
                         index=raised.index, **error.members)  # fmt: skip
    return error
