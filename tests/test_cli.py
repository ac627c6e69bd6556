"""The `pgtide` command line, run as a real subprocess against a real PostgreSQL."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.commands import ROOT, assert_one_line_error, env_for, pgtide
from tests.conftest import with_dbname
from tests.live import free_port

COMMANDS = [
    "migrate",
    "track",
    "untrack",
    "tables",
    "db-url",
    "db-stop",
    "serve",
    "sequencer",
    "relay",
]
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/x"


@pytest.fixture
def empty_db(server_url: str) -> Iterator[str]:
    """A database with nothing of pgtide's in it."""
    name = f"pgtide_empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def widgets(conn: psycopg.Connection[Any]) -> str:
    """A user table with a primary key, not tracked yet."""
    conn.execute("CREATE TABLE widgets (id int PRIMARY KEY, name text NOT NULL)")
    return "widgets"


def log_count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgtide.sync_log WHERE table_name = %s", (table,)
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command: str | None) -> None:
    args = ["--help"] if command is None else [command, "--help"]
    result = pgtide(*args, database_url=UNREACHABLE)
    assert result.returncode == 0, result.stderr
    assert "Usage: pgtide" in result.stdout
    if command is None:
        for name in COMMANDS:
            assert name in result.stdout


def test_migrate_on_a_migrated_database_is_a_no_op(db_url: str) -> None:
    first = pgtide("migrate", database_url=db_url)
    second = pgtide("migrate", database_url=db_url)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "database is up to date"


def test_migrate_builds_an_empty_database(empty_db: str) -> None:
    result = pgtide("migrate", database_url=empty_db)
    assert result.returncode == 0, result.stderr
    assert "0001_engine" in result.stdout
    assert pgtide("migrate", database_url=empty_db).stdout.strip() == "database is up to date"


def test_track_then_tables_lists_the_table(db_url: str, widgets: str) -> None:
    result = pgtide("track", widgets, database_url=db_url)
    assert result.returncode == 0, result.stderr
    assert "tracking widgets (primary key: id)" in result.stdout
    listing = pgtide("tables", database_url=db_url)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if " widgets " in line)
    assert "public" in row
    assert " id " in row


def test_tables_counts_changes(db_url: str, conn: psycopg.Connection[Any], widgets: str) -> None:
    assert pgtide("track", widgets, database_url=db_url).returncode == 0
    conn.execute("INSERT INTO widgets VALUES (1, 'a'), (2, 'b')")
    conn.execute("UPDATE widgets SET name = 'c' WHERE id = 1")
    listing = pgtide("tables", database_url=db_url)
    row = next(line for line in listing.stdout.splitlines() if " widgets " in line)
    assert row.split()[-2] == "3"  # the last cell before the table's right border


def test_track_is_idempotent(db_url: str, conn: psycopg.Connection[Any], widgets: str) -> None:
    assert pgtide("track", widgets, database_url=db_url).returncode == 0
    again = pgtide("track", f"public.{widgets}", database_url=db_url)
    assert again.returncode == 0, again.stderr
    conn.execute("INSERT INTO widgets VALUES (1, 'a')")
    assert log_count(conn, widgets) == 1  # one trigger, not two


def test_untrack_stops_capture(db_url: str, conn: psycopg.Connection[Any], widgets: str) -> None:
    assert pgtide("track", widgets, database_url=db_url).returncode == 0
    conn.execute("INSERT INTO widgets VALUES (1, 'a')")
    result = pgtide("untrack", widgets, database_url=db_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "untracked widgets"
    conn.execute("INSERT INTO widgets VALUES (2, 'b')")
    conn.execute("UPDATE widgets SET name = 'z'")
    assert log_count(conn, widgets) == 1
    assert " widgets " not in pgtide("tables", database_url=db_url).stdout
    again = pgtide("untrack", widgets, database_url=db_url)
    assert again.stdout.strip() == "widgets was not tracked"


def test_table_without_primary_key_is_refused(db_url: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE notes (body text)")
    result = pgtide("track", "notes", database_url=db_url)
    assert_one_line_error(result, "cannot track notes: it has no primary key")
    conn.execute("INSERT INTO notes VALUES ('x')")
    assert log_count(conn, "notes") == 0


def test_track_is_all_or_nothing(db_url: str, conn: psycopg.Connection[Any], widgets: str) -> None:
    conn.execute("CREATE TABLE notes (body text)")
    result = pgtide("track", widgets, "notes", database_url=db_url)
    assert_one_line_error(result, "notes")
    conn.execute("INSERT INTO widgets VALUES (1, 'a')")
    assert log_count(conn, widgets) == 0


@pytest.mark.parametrize("command", ["track", "untrack"])
def test_missing_table_is_one_line(db_url: str, command: str) -> None:
    result = pgtide(command, "no_such_table", database_url=db_url)
    assert_one_line_error(result, f"cannot {command} no_such_table", "does not exist")


def test_view_and_engine_tables_are_refused(db_url: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE VIEW v AS SELECT 1 AS id")
    assert_one_line_error(pgtide("track", "v", database_url=db_url), "it is not a table")
    engine = ("sync_log", "sync_order", "sync_sequencer", "sync_tracked", "sync_tokens",
              "sync_seal", "sync_idempotency", "sync_mutations", "sync_clocks", "sync_apps",
              "sync_retention", "_yoyo_migration")  # fmt: skip
    for table in engine:
        result = pgtide("track", f"pgtide.{table}", database_url=db_url)
        assert_one_line_error(result, "pgtide itself")
    # A table of one's own named like an engine table, in another schema, is trackable.
    conn.execute("CREATE TABLE public.sync_log (id int PRIMARY KEY, note text)")
    result = pgtide("track", "sync_log", database_url=db_url)
    assert result.returncode == 0, result.stderr
    conn.execute("INSERT INTO public.sync_log VALUES (1, 'mine')")
    logged = conn.execute(
        "SELECT schema_name, table_name, new_row FROM pgtide.sync_log ORDER BY id DESC LIMIT 1"
    ).fetchone()
    assert logged == ("public", "sync_log", {"id": 1, "note": "mine"})


@pytest.mark.parametrize("command", ["migrate", "tables", "sequencer", "serve"])
def test_unreachable_database_is_one_line(command: str) -> None:
    result = pgtide(command, database_url=UNREACHABLE)
    assert_one_line_error(result, "127.0.0.1")


@pytest.mark.parametrize("command", ["tables", "track"])
def test_unmigrated_database_says_to_migrate(empty_db: str, command: str) -> None:
    args = [command] if command == "tables" else [command, "some_table"]
    assert_one_line_error(pgtide(*args, database_url=empty_db), "run `pgtide migrate`")


def test_invalid_setting_is_one_line(db_url: str) -> None:
    result = pgtide("tables", database_url=db_url, PGTIDE_PORT="eighty")
    assert_one_line_error(result, "port")


def test_usage_error_exits_2() -> None:
    assert pgtide("track", database_url=UNREACHABLE).returncode == 2
    assert pgtide("no-such-command", database_url=UNREACHABLE).returncode == 2


def test_db_url_echoes_database_url(db_url: str) -> None:
    result = pgtide("db-url", database_url=db_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout == db_url + "\n"


class LineReader:
    """Reads a pipe's lines on a thread, so a test can wait for one with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, needle: str, timeout: float) -> list[str]:
        """Block until a line containing `needle` arrives; fail on EOF or after `timeout`."""
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"process ended before printing {needle!r}:\n" + "".join(seen))
            seen.append(line)
            if needle in line:
                return seen


@pytest.fixture
def serve(db_url: str) -> Iterator[str]:
    """A running `pgtide serve` on a free port; yields its base URL."""
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port), "--insecure-no-auth"],
        env=env_for(db_url),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        reader = LineReader(proc.stderr)
        try:
            # uvicorn logs this once the socket is bound and the lifespan has started.
            reader.wait_for("Uvicorn running on", timeout=30)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.thread.join(timeout=5)  # the pipe is at EOF: let it finish before closing
    assert proc.returncode == 0


def test_serve_answers_health(serve: str) -> None:
    response = httpx.get(f"{serve}/health", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_serve_answers_unknown_routes_with_problem_json(serve: str) -> None:
    response = httpx.get(f"{serve}/no/such/thing", timeout=5)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert body["title"] == "Not Found"
    assert "/no/such/thing" in body["detail"]


def test_serve_runs_the_sequencer(serve: str, db_url: str) -> None:
    # The sequencer NOTIFYs pgtide_sequenced after each batch: wait for that event.
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN pgtide_sequenced")
        with psycopg.connect(db_url, autocommit=True) as writer:
            writer.execute("INSERT INTO branches (code, name) VALUES ('B1', 'First')")
        for _ in listener.notifies(timeout=10, stop_after=1):
            break
        row = listener.execute(
            "SELECT l.table_name FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id"
        ).fetchall()
    assert row == [("branches",)]


def test_embedded_server_is_started_once_and_found_again(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    extra = {"PGTIDE_DATA_DIR": str(data_dir)}
    url = ""
    try:
        first = pgtide("db-url", database_url=None, cwd=tmp_path, **extra)
        assert first.returncode == 0, first.stderr
        url = first.stdout.strip()
        assert len(first.stdout.splitlines()) == 1  # only the URL: $(pgtide db-url) works
        assert first.stderr == ""  # and nothing else without -v
        noted = pgtide("db-url", "-v", database_url=None, cwd=tmp_path, **extra)
        assert noted.stdout == first.stdout and str(data_dir.resolve()) in noted.stderr
        with psycopg.connect(url) as c:
            started = c.execute("SELECT pg_postmaster_start_time()").fetchone()

        second = pgtide("db-url", database_url=None, cwd=tmp_path, **extra)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == url
        with psycopg.connect(url) as c:
            assert c.execute("SELECT pg_postmaster_start_time()").fetchone() == started
    finally:
        stop = pgtide("db-stop", database_url=None, cwd=tmp_path, **extra)
    assert stop.returncode == 0, stop.stderr
    assert "stopped" in stop.stderr
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=5)


def test_every_setting_is_documented_in_the_one_settings_table() -> None:
    from cdc.settings import Settings

    text = (ROOT / "docs/operations.md").read_text(encoding="utf-8")
    table = text[text.index("## Settings") : text.index("\n## ", text.index("## Settings") + 1)]
    for name in Settings.model_fields:
        variable = "DATABASE_URL" if name == "database_url" else f"PGTIDE_{name.upper()}"
        assert f"| `{variable}`" in table, f"docs/operations.md's table does not list {variable}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/operations.md#settings" in readme  # one table, the README points at it
