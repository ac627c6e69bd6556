"""`pgtide import RESOURCE FILE.csv`: the HTTP import's validation and COPY, from a file.

The file is validated whole (api/csvimport.py) before a connection is opened,
then COPYed in one transaction (api/csvcopy.py) recorded as written by the
actor given (default: the operating-system user) with origin `pgtide import`.
Refusals are ApiErrors with the same detail as the HTTP answer's; the command
prints it on one line.
"""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from api import transactions
from api.apps import Registry
from api.csvcopy import copy_in, failed_line, with_line
from api.csvimport import Prepared, prepare
from api.errors import ApiError
from api.writes import Author, begin
from cdc import db

ORIGIN = "pgtide import"


def resource_named(registry: Registry, name: str) -> Any:
    """The resource served at `/api/<name>`; ApiError naming the others."""
    res = registry.get(name)
    if res is None:
        known = ", ".join(registry.resources) or "none (install an app: pgtide migrate --app)"
        raise ApiError(404, f"no resource {name!r}; the resources are {known}")
    return res


def default_actor() -> str:
    """Who an import is recorded as written by, unless --actor says: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "pgtide-import"


@asynccontextmanager
async def _connection(url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await db.aconnect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def _write(url: str, res: Any, prepared: Prepared, actor: str, progress: Any) -> str:
    """COPY the prepared rows in one write transaction (retried as the HTTP import is)."""

    async def work(conn: psycopg.AsyncConnection[Any]) -> str:
        txid = await begin(conn, Author(actor=actor, origin=ORIGIN))
        await copy_in(conn, res, prepared, progress)  # from the start on every attempt
        return txid

    try:
        return await transactions.run(lambda: _connection(url), work)
    except ApiError as error:
        cause = error.__cause__
        if cause is None:
            raise
        raise with_line(error, failed_line(cause, prepared)) from cause


def import_file(
    url: str, registry: Registry, resource: str, path: Path, actor: str, console: Console
) -> tuple[int, str]:
    """Validate and import the CSV file at `path` into `resource`: (rows, txid).

    A rich progress bar shows validation, then writing, on `console` (when it is
    a terminal). Raises ApiError for a refused file; nothing is written then.
    """
    res = resource_named(registry, resource)
    columns = (
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, disable=not console.is_terminal) as bars:
        reading = bars.add_task("validating", total=path.stat().st_size)

        def read(done: int, task: TaskID = reading) -> None:
            bars.update(task, completed=done)

        with path.open("rb") as source:
            prepared = prepare(res, source, progress=read)
        try:
            writing = bars.add_task("writing", total=prepared.size)

            def wrote(done: int) -> None:
                bars.update(writing, completed=done)

            txid = asyncio.run(_write(url, res, prepared, actor, wrote))
        finally:
            prepared.close()
    return prepared.count, txid
