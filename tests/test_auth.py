"""Tokens, scopes and branch pinning on the stream (the write and audit routes add theirs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import httpx
import psycopg
import pytest

from cdc import db, tokens, tracking
from tests.auth import make_token
from tests.live import Server, Stream, problem_of


@pytest.fixture
def branches(db_url: str) -> dict[str, str]:
    with db.connect(db_url) as conn:
        rows = conn.execute(
            "INSERT INTO branches (code, name) VALUES ('A', 'A'), ('B', 'B') "
            "RETURNING code, id::text"
        ).fetchall()
    return {r[0]: r[1] for r in rows}


@pytest.fixture
def server(db_url: str, branches: dict[str, str]) -> Iterator[Server]:
    make_token(db_url, "bootstrap", "admin")
    srv = Server(db_url, auth=True, env={"PGTIDE_MAX_STREAMS_PER_TOKEN": "2"}).start()
    yield srv
    srv.stop()


def client_in(url: str, branch: str, name: str) -> str:
    with db.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO clients (branch_id, full_name) VALUES (%s, %s) RETURNING id::text",
            (branch, name),
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_tokens_are_stored_only_as_hashes(db_url: str) -> None:
    token = make_token(db_url, "alice", "read,write")
    assert token.startswith("pgt_") and len(token) > 40
    with db.connect(db_url) as conn:
        dump = conn.execute(
            "SELECT to_jsonb(t)::text, token_hash FROM pgtide.sync_tokens t"
        ).fetchone()
    assert dump is not None
    assert token not in dump[0] and token[4:] not in dump[0]
    assert bytes(dump[1]) == tokens.hash_token(token, None) != token.encode()


def test_serve_refuses_to_start_without_tokens(db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url}
    r = subprocess.run(
        [sys.executable, "-m", "api.cli", "serve", "--no-migrate", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    assert "no API token exists" in r.stderr and "Traceback" not in r.stderr


def test_stream_requires_a_valid_token_with_the_read_scope(server: Server, db_url: str) -> None:
    reader = make_token(db_url, "reader", "read")
    writer = make_token(db_url, "writer", "write")
    expired = make_token(db_url, "old", "read", expires_in=timedelta(seconds=1))
    revoked = make_token(db_url, "gone", "read")
    with db.connect(db_url) as conn:
        tokens.revoke(conn, "gone")
        conn.execute(
            "UPDATE pgtide.sync_tokens SET expires_at = now() - interval '1s' WHERE name = 'old'"
        )
    url = f"{server.base}/events"
    cases = [
        ({}, 401),
        ({"Authorization": "Bearer pgt_nonsense"}, 401),
        ({"Authorization": f"Basic {reader}"}, 401),
        ({"Authorization": f"Bearer {expired}"}, 401),
        ({"Authorization": f"Bearer {revoked}"}, 401),
        ({"Authorization": f"Bearer {writer}"}, 403),
    ]
    for headers, status in cases:
        r = httpx.get(url, headers=headers, timeout=5)
        assert r.status_code == status, (headers, r.text)
        problem_of(r)
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
    s = Stream(server.base, "/events", headers={"Authorization": f"Bearer {reader}"})
    assert s.status == 200
    s.until("synced")
    s.close()
    s = Stream(server.base, f"/events?access_token={reader}")  # EventSource's way
    assert s.status == 200
    s.close()
    # ...which only the stream accepts.
    r = httpx.get(f"{server.base}/api/clients?access_token={reader}", timeout=5)
    assert r.status_code == 401
    assert httpx.get(f"{server.base}/health", timeout=5).status_code == 200


def test_a_pinned_token_sees_only_its_branch_on_the_stream_whatever_it_asks(
    server: Server, db_url: str, branches: dict[str, str]
) -> None:
    a, b = branches["A"], branches["B"]
    token = make_token(db_url, "branch-a", "read", branch=a)
    auth = {"Authorization": f"Bearer {token}"}
    b_row = client_in(db_url, b, "secret-b")
    a_row = client_in(db_url, a, "ann")
    # Asking for B by filter gives nothing of B; a snapshot shows only A's rows.
    snap = Stream(server.base, f"/events?tables=clients&snapshot=true&branch_id=eq.{b}", auth)
    assert snap.until("synced") == []
    snap.close()
    snap = Stream(server.base, "/events?tables=clients&snapshot=true", auth)
    rows = snap.until("synced")
    snap.close()
    assert [r["pk"]["id"] for r in rows] == [a_row]
    # Of branches (whose tenant is its id) it gets its own branch's row alone.
    snap = Stream(server.base, "/events?tables=branches&snapshot=true", auth)
    assert [r["pk"]["id"] for r in snap.until("synced")] == [a]
    snap.close()
    # A table without a tenant column, not shared: not readable when pinned.
    with db.connect(db_url) as conn:
        conn.execute("CREATE TABLE hq_notes (id int PRIMARY KEY, body text)")
        tracking.track(conn, "hq_notes")
    r = httpx.get(f"{server.base}/events?tables=hq_notes", headers=auth, timeout=5)
    assert r.status_code == 400 and "branch-pinned" in problem_of(r)["detail"]

    s = Stream(server.base, "/events?tables=clients", auth)
    s.until("synced")
    with db.connect(db_url) as conn:
        conn.execute("UPDATE clients SET notes = 'b only' WHERE id = %s", (b_row,))
        conn.execute("UPDATE clients SET branch_id = %s, notes = 'moved' WHERE id = %s", (b, a_row))
        conn.execute("UPDATE clients SET notes = 'after move' WHERE id = %s", (a_row,))
        conn.execute("UPDATE clients SET branch_id = %s WHERE id = %s", (a, b_row))
        conn.execute("DELETE FROM clients WHERE id = %s", (b_row,))
    got = s.changes(3)
    s.close()
    # Moving A's row to B: a DELETE carrying only the old (A) image; nothing after.
    assert (got[0]["op"], got[0]["pk"]["id"], got[0]["row"]) == ("DELETE", a_row, None)
    assert got[0]["old"]["branch_id"] == a and got[0]["changed"] is None
    # B's row arriving in A: an INSERT without the old (B) image.
    assert (got[1]["op"], got[1]["pk"]["id"], got[1]["old"]) == ("INSERT", b_row, None)
    assert got[1]["row"]["notes"] == "b only" and got[1]["row"]["branch_id"] == a
    assert (got[2]["op"], got[2]["pk"]["id"]) == ("DELETE", b_row)
    text = repr(got)
    assert "moved" not in text and "after move" not in text


def test_revoking_a_token_closes_its_open_streams(server: Server, db_url: str) -> None:
    token = make_token(db_url, "temp", "read")
    s = Stream(server.base, "/events", {"Authorization": f"Bearer {token}"})
    s.until("synced")
    with db.connect(db_url) as conn:
        assert tokens.revoke(conn, "temp")
    while (ev := s.next(timeout=15)) is not None:  # ends within the watcher's interval
        assert ev.event != "message"
    s.close()
    r = httpx.get(f"{server.base}/events", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_a_token_may_hold_only_so_many_streams(server: Server, db_url: str) -> None:
    token = make_token(db_url, "greedy", "read")
    auth = {"Authorization": f"Bearer {token}"}
    streams = [Stream(server.base, "/events", auth) for _ in range(2)]
    for s in streams:
        s.until("synced")
    r = httpx.get(f"{server.base}/events", headers=auth, timeout=5)
    assert r.status_code == 429 and problem_of(r)["status"] == 429
    for s in streams:
        s.close()


def test_token_cli_creates_lists_and_revokes(db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url}

    def pgtide(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args], env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip

    made = pgtide("token", "create", "--name", "ops", "--scope", "read,audit", "--expires", "90d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pgt_")
    listed = pgtide("token", "list")
    assert "ops" in listed.stdout and token not in listed.stdout
    bad = pgtide("token", "create", "--name", "x", "--scope", "root")
    assert bad.returncode == 1 and "unknown scope 'root'" in bad.stderr
    assert pgtide("token", "revoke", "ops").returncode == 0
    again = pgtide("token", "revoke", "ops")
    assert again.returncode == 1 and "no active token" in again.stderr
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT revoked_at IS NOT NULL FROM pgtide.sync_tokens").fetchone()
    assert row == (True,)
