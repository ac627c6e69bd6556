"""The database edge: resolving the URL, opening connections, adapting xid8."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads

from cdc.errors import DatabaseUnavailable
from cdc.queries import queries
from cdc.settings import Settings
from cdc.values import exact_loads


def resolve_url(settings: Settings) -> str:
    """Return the database URL: `DATABASE_URL`, or the embedded server's (started if needed)."""
    if settings.database_url:
        return settings.database_url
    from cdc import embedded

    return embedded.start(settings.data_dir)


class Xid8Loader(Loader):
    """Load xid8 as a Python int (psycopg has no built-in adapter for it)."""

    def load(self, data: Any) -> int:
        return int(bytes(data))


def register_types(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Adapt pgtide's column types on `conn`."""
    conn.adapters.register_loader("xid8", Xid8Loader)
    exact_json(conn)


def exact_json(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Load row images keeping each number's text, so filters compare numbers exactly."""
    set_json_loads(exact_loads, conn)


async def configure_pooled(conn: psycopg.AsyncConnection[Any]) -> None:
    """A pool's `configure`: its connections load row images as `register_types` does."""
    exact_json(conn)


def pooled_with_timeout(
    statement_timeout_ms: int,
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """A pool's `configure` that also bounds every statement of its sessions.

    For the server's pools only: the listener, the sequencer and migrations open
    their own connections and run without a statement timeout.
    """

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await configure_pooled(conn)
        await conn.execute(queries["statement_timeout"], {"ms": str(statement_timeout_ms)})

    return configure


def connect(url: str, *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection, turning connection failures into `DatabaseUnavailable`."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {first_line(exc)}") from exc
    register_types(conn)
    return conn


async def aconnect(
    url: str, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """Async twin of `connect`."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {first_line(exc)}") from exc
    register_types(conn)
    return conn


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (libpq's are multi-line)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = params.get("host", "localhost")
    port = params.get("port", "5432")
    return f"{params.get('user', '')}@{host}:{port}/{params.get('dbname', '')}"
