"""Retention: only sequenced changes older than the limit go, whole seals from the oldest,
in batches, recorded; verify still passes; a stream resuming from a removed cursor gets
`reset`.

Old changes are written straight into pgtide.sync_log with an old `at` (inserts pass the
append-only guard), then sequenced by a real sequencer like any other change.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from api.cli import cli
from cdc import db
from cdc.retention import RETENTION_LOCK_KEY, RetentionReport, run_retention
from cdc.seal import verify
from tests.live import Server, Stream
from tests.sequencing import sequence_all

KEEP = timedelta(days=30)
OLD = 12

OLD_ROWS = """
INSERT INTO pgtide.sync_log (at, schema_name, table_name, op, pk, new_row)
SELECT now() - interval '40 days' + g * interval '1 minute', 'public', 't', 'INSERT',
       jsonb_build_object('id', g), jsonb_build_object('id', g, 'v', 'old')
  FROM generate_series(1, %(n)s) g
"""


@pytest.fixture
def url(db_url: str) -> str:
    """12 changes from 40 days ago, then 8 of today (sequenced apart: separate seals)."""
    with db.connect(db_url) as conn:
        conn.execute(b"CREATE TABLE t (id int PRIMARY KEY, v text); SELECT pgtide.track_v1('t')")
        conn.execute(OLD_ROWS, {"n": OLD})
    sequence_all(db_url, batch_rows=5)
    with db.connect(db_url) as conn:
        conn.execute("INSERT INTO t SELECT g, 'new' FROM generate_series(1, 8) g")
    sequence_all(db_url, batch_rows=5)
    return db_url


def log(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT o.seq, l.new_row->>'v' FROM pgtide.sync_order o "
        "JOIN pgtide.sync_log l ON l.id = o.log_id ORDER BY o.seq"
    ).fetchall()
    return [(int(s), v) for s, v in rows]


def test_retention_removes_only_what_is_older_than_the_limit(url: str) -> None:
    batches: list[int] = []
    with db.connect(url) as conn:
        report = run_retention(
            conn, KEEP, batch=5, on_batch=lambda r: batches.append(r.removed_through)
        )
        assert report.removed_rows == OLD and report.removed_through == OLD
        assert batches == [5, 10, 12]  # three short transactions
        assert log(conn) == [(OLD + i, "new") for i in range(1, 9)]
        assert conn.execute("SELECT count(*) FROM pgtide.sync_log").fetchone() == (8,)
        record = conn.execute(
            "SELECT keep_interval, removed_through, removed_rows FROM pgtide.sync_retention"
        ).fetchall()
        assert record == [(KEEP, OLD, OLD)]
        # Nothing more is old enough: a second run removes nothing and records nothing.
        again = run_retention(conn, KEEP)
        assert again.removed_rows == 0 and again.removed_through == OLD
        assert conn.execute("SELECT count(*) FROM pgtide.sync_retention").fetchone() == (1,)


def test_the_log_still_verifies_after_retention(url: str) -> None:
    with db.connect(url) as conn:
        run_retention(conn, KEEP, batch=4)
        report = verify(conn)
    assert report.intact, report.problems
    assert report.removed_through == OLD and report.rows == 8 and report.last_seq == OLD + 8


def test_a_seal_cut_by_an_interrupted_run_is_checked_on_its_remaining_rows(url: str) -> None:
    """A run stopped mid-seal leaves part of a seal; verify checks what is left of it."""

    class Interrupted(Exception):
        pass

    def stop_after_two(report: RetentionReport) -> None:
        if report.batches == 2:
            raise Interrupted

    with db.connect(url) as conn:
        with pytest.raises(Interrupted):
            run_retention(conn, KEEP, batch=3, on_batch=stop_after_two)
        assert conn.execute("SELECT min(seq) FROM pgtide.sync_order").fetchone() == (7,)
        report = verify(conn)
        assert report.intact and report.removed_through == 6 and report.rows == OLD + 8 - 6
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("UPDATE pgtide.sync_log SET actor = 'x' WHERE id = "
                         "(SELECT log_id FROM pgtide.sync_order WHERE seq = 8)")  # fmt: skip
        assert [(p.kind, p.seq) for p in verify(conn).problems] == [("changed", 8)]
        # The next run goes on from the record.
        assert run_retention(conn, KEEP).removed_through == OLD


def test_unsequenced_old_changes_are_never_removed(url: str) -> None:
    with db.connect(url) as conn:
        conn.execute(OLD_ROWS, {"n": 3})  # committed, old, but no sequencer has seen them
        before = conn.execute("SELECT count(*) FROM pgtide.sync_log").fetchone()
        run_retention(conn, KEEP)
        after = conn.execute("SELECT count(*) FROM pgtide.sync_log").fetchone()
    assert before is not None and after is not None
    assert int(before[0]) - int(after[0]) == OLD  # only the sequenced old ones


def test_a_seal_holding_a_recent_change_is_kept_whole(db_url: str) -> None:
    """Old and new changes sealed together: nothing of that seal goes."""
    with db.connect(db_url) as conn:
        conn.execute(b"CREATE TABLE t (id int PRIMARY KEY, v text); SELECT pgtide.track_v1('t')")
        conn.execute(OLD_ROWS, {"n": 3})
        conn.execute("INSERT INTO t VALUES (1, 'new')")
    sequence_all(db_url, batch_rows=100)  # one batch, one seal
    with db.connect(db_url) as conn:
        assert run_retention(conn, KEEP).removed_rows == 0
        assert len(log(conn)) == 4


def test_one_run_at_a_time(url: str) -> None:
    with db.connect(url) as holder, db.connect(url) as conn:
        holder.execute("SELECT pg_advisory_lock(%s)", (RETENTION_LOCK_KEY,))
        assert run_retention(conn, KEEP).skipped
        holder.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_KEY,))
        assert run_retention(conn, KEEP).removed_rows == OLD


def test_retention_cli(url: str) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": url}
    bad = runner.invoke(cli, ["retention", "--keep", "a month"], env=env)
    assert bad.exit_code == 2 and "--keep" in bad.output
    done = runner.invoke(cli, ["retention", "--keep", "30d", "--batch", "4"], env=env)
    assert done.exit_code == 0, done.output
    assert f"removed {OLD} change(s) through seq {OLD}" in done.stdout
    again = runner.invoke(cli, ["retention", "--keep", "30d"], env=env)
    assert again.exit_code == 0 and "nothing to remove" in again.stdout


def test_a_stream_resuming_from_a_removed_cursor_gets_reset(url: str) -> None:
    with db.connect(url) as conn:
        run_retention(conn, KEEP)
    srv = Server(url).start()
    try:
        for headers, path in [({"Last-Event-ID": "3"}, "/events"), ({}, "/events?since=1")]:
            stream = Stream(srv.base, path, headers)
            try:
                assert stream.status == 200
                ev = stream.next()
                assert ev is not None and ev.event == "reset", ev
                assert f'"earliest":{OLD + 1}' in ev.data
            finally:
                stream.close()
        # A cursor at the edge of what is kept resumes normally.
        stream = Stream(srv.base, f"/events?since={OLD}")
        try:
            assert len(stream.until("synced")) == 8
        finally:
            stream.close()
    finally:
        srv.stop()


def test_serve_runs_retention_when_asked(url: str) -> None:
    """PGTIDE_RETENTION_KEEP: serve removes old changes on its own (each batch NOTIFYs)."""

    async def scenario() -> None:
        async with await db.aconnect(url) as conn:
            await conn.execute("LISTEN pgtide_retention")
            env = {"PGTIDE_RETENTION_KEEP": "30d", "PGTIDE_RETENTION_BATCH": "5"}
            srv = await asyncio.to_thread(Server(url, env=env).start)
            try:
                seen: list[str] = []
                async for note in conn.notifies(timeout=20):
                    seen.append(note.payload)
                    if note.payload == str(OLD):
                        break
                assert seen == ["5", "10", str(OLD)]
            finally:
                await asyncio.to_thread(srv.stop)
        with db.connect(url) as conn:
            assert conn.execute("SELECT min(seq) FROM pgtide.sync_order").fetchone() == (OLD + 1,)

    asyncio.run(asyncio.wait_for(scenario(), 60))
