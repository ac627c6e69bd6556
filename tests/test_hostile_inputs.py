"""Hostile inputs outside the stream's filters (issue 13): malformed parameters are a
400, never a 500; `pgtide audit` prints values literally and its CSV cannot run formulas."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.auditview import read_csv_record
from cdc import db
from tests.live import Server, Stream, problem_of
from tests.sequencing import sequence_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(db_url) as conn:
        conn.execute("CREATE TABLE nums (id int PRIMARY KEY, v text)")
        conn.execute("SELECT pgtide.track_v1('nums')")
        yield conn


@pytest.fixture
def server(db_url: str, sql: psycopg.Connection[Any]) -> Iterator[Server]:
    srv = Server(db_url).start()
    yield srv
    srv.stop()


def orders(sql: psycopg.Connection[Any], code: str, totals: list[str], created: str) -> None:
    b = sql.execute(
        "INSERT INTO branches (code, name) VALUES (%s, %s) RETURNING id", (code, code)
    ).fetchone()
    assert b is not None
    c = sql.execute(
        "INSERT INTO clients (branch_id, full_name) VALUES (%s, 'C') RETURNING id", (b[0],)
    ).fetchone()
    assert c is not None
    for t in totals:
        sql.execute(
            "INSERT INTO orders (branch_id, client_id, total, created_at) "
            "VALUES (%s, %s, %s::numeric, %s::timestamptz)",
            (b[0], c[0], t, created),
        )


NUL = "%00"
SYNC_LOG_NUL = [
    f"table=a{NUL}", f"op=insert{NUL}", f"actor={NUL}", f"origin=x{NUL}", f"txid=1{NUL}",
    f"from=2026-01-01{NUL}", f"after=1{NUL}", f"order=asc{NUL}", f"table=nums&pk=1{NUL}",
    f"limit={NUL}", f"{NUL}=1", "limit=%C2%B2", "txid=%C2%B2",
]  # fmt: skip
BAD_API = [
    "/api/clients?limit=%C2%B2",  # '²'.isdigit() is true, int('²') fails
    "/api/clients?limit=%D9%A1",  # an Arabic-Indic one
    f"/api/clients?limit=1{NUL}",
    f"/api/clients?full_name=eq.a{NUL}b",
    f"/api/clients?full_name=in.(a,{NUL})",
    f"/api/clients?search={NUL}",
    f"/api/clients?order={NUL}",
    f"/api/clients?after={NUL}",
    f"/api/clients?{NUL}=eq.1",
    "/api/orders?total=lt.%C2%B2",
    "/api/orders?total=lt.%D9%A1%D9%A2",
    "/api/orders?total=gt.1e131072",
    "/api/orders?created_at=lt.294277-01-01",
    "/api/orders?created_at=lt.2026-02-30",
    '/api/sync-log?table=clients&pk={"id":1e999}',  # a uuid key given a number
    '/api/sync-log?table=nums&pk={"id":1e999999}',  # beyond numeric's range
    '/api/sync-log?table=nums&pk={"id":NaN}',
    '/api/sync-log?table=nums&pk={"id":Infinity}',
    "/api/sync-log?table=nums&pk=NaN",
    '/api/sync-log?table=nums&pk={"id":"a\\u0000"}',
    *(f"/api/sync-log?{p}" for p in SYNC_LOG_NUL),
]
GOOD_API = [
    '/api/sync-log?table=nums&pk={"id":1e999}',  # a number numeric holds: no row has it
    "/api/sync-log?table=nums&pk=1e3",
    "/api/orders?total=lt.NaN",
    "/api/orders?created_at=lt.infinity",
    "/api/orders?created_at=gt.10000-01-01",
    "/api/orders?total=in.(NaN,1e999)",
]
BAD_STREAM = [
    f"tables=orders{NUL}", f"tables=orders&ops=insert{NUL}", f"tables=orders&topics=a{NUL}",
    f"tables=orders&since=1{NUL}", f"tables=orders&snapshot=true{NUL}",
    f"tables=orders&status=eq.new{NUL}", f"tables=orders&{NUL}status=eq.new",
    f"tables=orders&total=lt.{NUL}", "tables=orders&total=lt.%C2%B2",
    "tables=orders&total=lt.%D9%A1%D9%A2", f"tables=orders&x{NUL}=1",
]  # fmt: skip


def test_malformed_parameters_are_400_problem_json_never_500(server: Server) -> None:
    with httpx.Client(base_url=server.base, timeout=10) as http:
        for url in BAD_API:
            resp = http.get(url)
            assert resp.status_code == 400, (url, resp.status_code, resp.text)
            problem_of(resp)
        for url in GOOD_API:
            resp = http.get(url)
            assert resp.status_code == 200, (url, resp.status_code, resp.text)
        for query in BAD_STREAM:
            resp = http.get(f"/events?{query}")
            assert resp.status_code == 400, (query, resp.status_code, resp.text)
            problem_of(resp)


def test_list_filters_follow_postgresql_for_nan_and_infinity(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    orders(sql, "B1", ["1.50", "NaN", "0"], "now")
    orders(sql, "B2", ["7"], "infinity")
    cases = {
        "total=lt.NaN": "total < 'NaN'",
        "total=eq.NaN": "total = 'NaN'",
        "total=gte.Infinity": "total >= 'Infinity'",
        "total=in.(NaN,0)": "total IN ('NaN', 0)",
        "created_at=lt.infinity": "created_at < 'infinity'",
        "created_at=eq.infinity": "created_at = 'infinity'",
        "created_at=gt.10000-01-01": "created_at > '10000-01-01'",
    }
    for query, where in cases.items():
        resp = httpx.get(f"{server.base}/api/orders?{query}&limit=500", timeout=10)
        assert resp.status_code == 200, (query, resp.text)
        want = sql.execute(f"SELECT id::text FROM orders WHERE {where}").fetchall()
        assert sorted(r["id"] for r in resp.json()["data"]) == sorted(r[0] for r in want), query
    # Ordered by a time with a row at infinity: every page, and cursors that go on.
    for order in ("created_at", "created_at.desc", "updated_at,version.desc"):
        url: str | None = f"{server.base}/api/orders?order={order}&limit=1"
        seen = []
        while url is not None:
            resp = httpx.get(url, timeout=10)
            assert resp.status_code == 200, (order, resp.text)
            seen += [r["id"] for r in resp.json()["data"]]
            url = resp.json()["next"] and f"{server.base}{resp.json()['next']}"
        assert len(seen) == len(set(seen)) == 4, order
    # The stream agrees with the listing on the same rows.
    snap = Stream(server.base, "/events?tables=orders&snapshot=true&total=lt.NaN")
    got = snap.until("synced")
    snap.close()
    assert sorted(e["row"]["total"] for e in got) == [0, 1.5, 7]


# ---- pgtide audit -------------------------------------------------------------------

HOSTILE = {
    "markup": "[/bold]",
    "link": "[link=https://evil.example]click[/link]",
    "formula": '=HYPERLINK("https://evil.example","click")',
    "plus": "+1+1",
    "minus": "-2+3",
    "at": "@SUM(A1:A9)",
    "tab": "\t=1",
    "quote": "'already quoted",
}


@pytest.fixture
def hostile_log(db_url: str, sql: psycopg.Connection[Any]) -> str:
    for i, (name, text) in enumerate(HOSTILE.items(), start=1):
        with sql.transaction():
            sql.execute("SELECT set_config('pgtide.actor', %s, true)", (text,))
            sql.execute("SELECT set_config('pgtide.origin', %s, true)", (text,))
            sql.execute("INSERT INTO nums (id, v) VALUES (%s, %s)", (i, f"{name}:{text}"))
    sequence_all(db_url)
    return db_url


def pgtide(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGTIDE_")}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
        env={**env, "DATABASE_URL": url, "COLUMNS": "400"},
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_audit_table_and_history_print_markup_literally(hostile_log: str) -> None:
    table = pgtide(hostile_log, "audit", "--table", "nums")
    assert table.returncode == 0, table.stderr
    assert "[/bold]" in table.stdout and "[link=https://evil.example]click[/link]" in table.stdout
    for i, text in enumerate(HOSTILE.values(), start=1):
        history = pgtide(hostile_log, "audit", "history", "nums", str(i))
        assert history.returncode == 0, history.stderr
        assert text.replace("\t", "") in history.stdout.replace("\t", ""), history.stdout


def test_audit_csv_cells_cannot_run_as_formulas_and_still_parse_back(hostile_log: str) -> None:
    out = pgtide(hostile_log, "audit", "--table", "nums", "--format", "csv", "--order", "asc")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == len(HOSTILE)
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert [r["actor"] for r in rows] == [
        t if t[0] not in "=+-@\t'" else "'" + t for t in HOSTILE.values()
    ]
    jsonl = pgtide(hostile_log, "audit", "--table", "nums", "--format", "jsonl", "--order", "asc")
    assert [read_csv_record(r) for r in rows] == [json.loads(x) for x in jsonl.stdout.splitlines()]
