"""Tamper evidence: the seal chain written by the sequencer, and `pgtide audit verify`.

Tampering is done as the superuser with `session_replication_role = replica`, which
turns off the append-only guard (and the foreign key's triggers): exactly what the
guard cannot stop, and what the seals must reveal.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import uuid
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from yoyo import get_backend, read_migrations

from api.cli import cli
from cdc import db
from cdc.migrate import migrate, schema_dir, yoyo_url
from cdc.queries import queries
from cdc.seal import verify
from tests.conftest import drop_database, with_dbname
from tests.sequencing import sequence_all

SETUP = """
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT pgtide.track_v1('t');
"""
ROWS = 30


@pytest.fixture
def url(db_url: str) -> str:
    """30 changes in 10 transactions, sequenced 5 rows a batch: several seals."""
    with db.connect(db_url) as conn:
        conn.execute(SETUP.encode())
        for i in range(10):
            with conn.transaction():
                conn.execute("SELECT set_config('pgtide.actor', %s, true)", (f"user{i}",))
                conn.execute("INSERT INTO t VALUES (%s, 'a'), (%s, 'b')", (2 * i, 2 * i + 1))
                conn.execute("UPDATE t SET v = 'c' WHERE id = %s", (2 * i,))
    sequence_all(db_url, batch_rows=5)
    return db_url


def tamper(url: str, *statements: str) -> None:
    with db.connect(url) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for s in statements:
            conn.execute(s)


def log_id(url: str, seq: int) -> int:
    with db.connect(url) as conn:
        row = conn.execute("SELECT log_id FROM pgtide.sync_order WHERE seq = %s", (seq,)).fetchone()
    assert row is not None
    return int(row[0])


def check(url: str) -> Any:
    with db.connect(url) as conn:
        return verify(conn)


def test_the_sequencer_chains_one_seal_per_batch(url: str) -> None:
    with db.connect(url) as conn:
        seals = conn.execute(
            "SELECT seal_no, first_seq, last_seq, hash, prev_hash, min_at, max_at, sealed_at "
            "FROM pgtide.sync_seal ORDER BY seal_no"
        ).fetchall()
    assert seals[0][:3] == (0, 1, 0) and bytes(seals[0][3]) == hashlib.sha256(b"").digest()
    assert len(seals) >= 4
    for prev, cur in itertools.pairwise(seals):
        assert cur[0] == prev[0] + 1 and cur[1] == prev[2] + 1
        assert bytes(cur[4]) == bytes(prev[3])  # each seal chains the previous hash
        assert cur[5] <= cur[6] <= cur[7] and cur[7] >= prev[7]
    assert seals[-1][2] == ROWS


def test_an_intact_log_verifies_up_to_its_last_cursor(url: str) -> None:
    report = check(url)
    assert report.intact and report.problems == []
    assert report.last_seq == ROWS and report.rows == ROWS and report.intact_through == ROWS
    result = CliRunner().invoke(cli, ["audit", "verify"], env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"intact up to cursor {ROWS} (")


def test_an_edited_row_is_named(url: str) -> None:
    lid = log_id(url, 12)
    tamper(
        url,
        f'UPDATE pgtide.sync_log SET new_row = new_row || \'{{"v": "forged"}}\' WHERE id = {lid}',
    )
    report = check(url)
    assert [(p.kind, p.seq, p.log_id) for p in report.problems] == [("changed", 12, lid)]
    assert report.intact_through == 11
    result = CliRunner().invoke(cli, ["audit", "verify"], env={"DATABASE_URL": url})
    assert result.exit_code == 1
    assert "intact only up to cursor 11" in result.stdout
    assert f"seq 12 (pgtide.sync_log id {lid}) was changed" in result.stdout


def test_an_edited_actor_or_time_is_named_too(url: str) -> None:
    tamper(
        url,
        f"UPDATE pgtide.sync_log SET actor = 'someone-else' WHERE id = {log_id(url, 3)}",
        f"UPDATE pgtide.sync_log SET at = at - interval '1 day' WHERE id = {log_id(url, 20)}",
    )
    assert [(p.kind, p.seq) for p in check(url).problems] == [("changed", 3), ("changed", 20)]


def test_a_deleted_row_is_named(url: str) -> None:
    lid = log_id(url, 17)
    tamper(
        url,
        "DELETE FROM pgtide.sync_order WHERE seq = 17",
        f"DELETE FROM pgtide.sync_log WHERE id = {lid}",
    )
    report = check(url)
    assert [(p.kind, p.seq) for p in report.problems] == [("removed", 17)]
    assert "seq 17 was removed" in report.problems[0].detail


def test_a_log_row_deleted_under_its_order_row_is_named(url: str) -> None:
    lid = log_id(url, 8)
    tamper(url, f"DELETE FROM pgtide.sync_log WHERE id = {lid}")
    assert [(p.kind, p.seq, p.log_id) for p in check(url).problems] == [("removed", 8, lid)]


def test_an_inserted_row_is_named(url: str) -> None:
    tamper(
        url,
        "INSERT INTO pgtide.sync_log (schema_name, table_name, op, pk, new_row) "
        """VALUES ('public', 't', 'INSERT', '{"id": 999}', '{"id": 999, "v": "x"}')""",
        f"INSERT INTO pgtide.sync_order VALUES ({ROWS + 1}, (SELECT max(id) FROM pgtide.sync_log))",
        f"UPDATE pgtide.sync_sequencer SET last_seq = {ROWS + 1}",
    )
    report = check(url)
    assert [(p.kind, p.seq) for p in report.problems] == [("inserted", ROWS + 1)]
    assert report.intact_through == ROWS


def test_a_row_swapped_for_another_is_named(url: str) -> None:
    """The order row pointed at a forged log row: the row at that seq changed."""
    tamper(
        url,
        "INSERT INTO pgtide.sync_log (schema_name, table_name, op, pk, new_row) "
        """VALUES ('public', 't', 'INSERT', '{"id": 5}', '{"id": 5, "v": "forged"}')""",
        "UPDATE pgtide.sync_order SET log_id = (SELECT max(id) FROM pgtide.sync_log) WHERE seq = 6",
    )
    assert [(p.kind, p.seq) for p in check(url).problems] == [("changed", 6)]


def test_a_rewritten_seal_is_reported(url: str) -> None:
    tamper(url, "UPDATE pgtide.sync_seal SET hash = sha256('x'::bytea) WHERE seal_no = 2")
    problems = check(url).problems
    assert problems and all(p.kind == "seal" for p in problems)
    assert any(p.seal_no == 2 for p in problems)  # its own rows no longer hash to it
    assert any(p.seal_no == 3 for p in problems)  # and the next seal no longer chains


def test_verify_reads_one_snapshot_while_the_sequencer_seals(url: str) -> None:
    """New batches sealed between two verifies are covered by the second."""
    with db.connect(url) as conn:
        conn.execute("INSERT INTO t SELECT g, 'z' FROM generate_series(100, 140) g")
    sequence_all(url, batch_rows=7)
    report = check(url)
    assert report.intact and report.last_seq == ROWS + 41


def test_the_digest_ignores_session_settings(url: str) -> None:
    """The canonical text does not depend on TimeZone, DateStyle or extra_float_digits."""
    with db.connect(url) as conn:
        query = "SELECT pgtide.log_digest_v1(o.seq, l) FROM pgtide.sync_order o " \
                "JOIN pgtide.sync_log l ON l.id = o.log_id ORDER BY o.seq"  # fmt: skip
        plain = conn.execute(query).fetchall()
        conn.execute("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY'; "
                     "SET extra_float_digits = 0")  # fmt: skip
        assert conn.execute(query).fetchall() == plain
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        tamper_guarded(url)


def tamper_guarded(url: str) -> None:
    """Without bypassing the guard, editing the seals is refused like the log."""
    with db.connect(url) as conn:
        conn.execute("UPDATE pgtide.sync_seal SET hash = hash WHERE seal_no = 1")


UNSEALED_BATCH = re.sub(
    r"\), seal AS \(.*?\), upd AS \(", "), upd AS (", queries["sequence_batch"], flags=re.S
)


def test_migrating_a_sequenced_log_seals_it_and_old_sequencers_are_covered(
    server_url: str,
) -> None:
    """0005 on a database with a log sequenced before it; then a sequencer of the old
    version (no seal) and one of the new version take turns, as in a rolling deploy."""
    name = f"pgtide_v_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(server_url, name)
    shipped = queries["sequence_batch"]
    try:
        with db.connect(url) as conn:
            conn.execute("CREATE SCHEMA pgtide")  # migrate makes it first, too
        backend = get_backend(yoyo_url(url))
        try:
            migrations = read_migrations(str(schema_dir() / "migrations"))
            later = ("0005_audit", "0007_apps")  # 0007 replaces 0005's seal function
            with backend.lock():
                backend.apply_migrations(
                    backend.to_apply(migrations.filter(lambda m: m.id not in later))
                )
        finally:
            backend.connection.close()
        with db.connect(url) as conn:
            conn.execute(SETUP.encode())
            conn.execute("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 25) g")
        queries["sequence_batch"] = UNSEALED_BATCH  # the sequencer as it was before 0005
        sequence_all(url, batch_rows=10)

        assert migrate(url).applied == ["0005_audit", "0007_apps"]
        report = check(url)
        assert report.intact and report.rows == 25 and report.last_seq == 25

        with db.connect(url) as conn:
            conn.execute("INSERT INTO t SELECT g, 'old' FROM generate_series(100, 104) g")
        sequence_all(url)  # still the old statement: rows left unsealed for a moment
        queries["sequence_batch"] = shipped
        with db.connect(url) as conn:
            conn.execute("INSERT INTO t SELECT g, 'new' FROM generate_series(200, 202) g")
        sequence_all(url)
        with db.connect(url) as conn:
            last = conn.execute(
                "SELECT first_seq, last_seq FROM pgtide.sync_seal ORDER BY seal_no DESC LIMIT 1"
            ).fetchone()
        assert last == (26, 33)  # the new seal covers the old sequencer's rows too
        report = check(url)
        assert report.intact and report.rows == 33
    finally:
        queries["sequence_batch"] = shipped
        drop_database(server_url, name)
