"""`pgtide tail` and `pgtide serve --workers`, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import psycopg

from cdc import db
from tests.live import Server, Stream


def test_tail_prints_matching_changes_as_json_lines(db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url, "PGTIDE_LOG_LEVEL": "warning"}
    with db.connect(db_url) as conn:
        conn.execute("INSERT INTO branches (code, name) VALUES ('B1', 'One')")
    cmd = [sys.executable, "-m", "api.cli", "tail", "--json", "--tables", "branches",
           "--since", "earliest", "--where", "code=neq.SKIP"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines: list[dict[str, Any]] = []

        def read_until(pred: Any) -> None:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.append(json.loads(line))
                if pred(lines[-1]):
                    return
            raise AssertionError(f"tail ended early: {lines}")

        read_until(lambda e: e["event"] == "synced")
        with db.connect(db_url) as conn:
            conn.execute("INSERT INTO branches (code, name) VALUES ('SKIP', 'no')")
            conn.execute("INSERT INTO branches (code, name) VALUES ('B2', 'Two')")
        read_until(lambda e: e.get("row", {}) and e["row"]["code"] == "B2")
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    changes = [e for e in lines if e["event"] == "change"]
    assert [e["row"]["code"] for e in changes] == ["B1", "B2"]
    assert [e["op"] for e in changes] == ["INSERT", "INSERT"]


def test_tail_rejects_a_bad_filter_in_one_line(db_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": db_url}
    r = subprocess.run(
        [sys.executable, "-m", "api.cli", "tail", "--tables", "nope"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    expected = "Error: unknown table 'nope': it is not tracked by pgtide"
    assert r.stderr.strip().splitlines() == [expected]


def test_serve_with_two_workers_streams_the_same_events(db_url: str) -> None:
    srv = Server(db_url, args=("--workers", "2")).start()
    try:
        # /ready answered from one worker; the other may still be connecting (503), and
        # an EventSource would retry: so do we, until each stream is open.
        streams = [open_stream(srv.base, "/events?tables=branches") for _ in range(4)]
        for s in streams:
            s.until("synced")
        with psycopg.connect(db_url, autocommit=True) as conn:
            for i in range(20):
                conn.execute("INSERT INTO branches (code, name) VALUES (%s, 'x')", (f"W{i}",))
        got = [[(e["seq"], e["row"]["code"]) for e in s.changes(20, timeout=60)] for s in streams]
        for s in streams:
            s.close()
    finally:
        srv.stop()
    assert all(g == got[0] for g in got)
    assert [c for _, c in got[0]] == [f"W{i}" for i in range(20)]


def open_stream(base: str, path: str, timeout: float = 30) -> Stream:
    """A stream that was answered 200, retrying 503s (a worker still connecting)."""
    deadline = time.monotonic() + timeout
    while True:
        s = Stream(base, path)
        if s.status == 200:
            return s
        s.close()
        assert s.status == 503 and time.monotonic() < deadline, s.status
        time.sleep(0.1)  # what EventSource's retry does
