"""Audit reads: every sync-log filter and combination against a direct SQL query, row
history, the HTTP routes and their 400s, the CLI's formats, and the documented roles.

One generated log per module (tables with int, uuid, text and two-column keys; many
actors and origins, some changes without either; a TRUNCATE, a message, and a long
transaction written early and sequenced late), sequenced in small batches so that
the time filters cross many seals.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import errors, sql
from rich.cells import cell_len

from api.auditview import read_csv_record
from api.cli import cli
from cdc import db
from cdc.audit import change_record, history, list_changes, parse_query
from cdc.errors import CursorError, FilterError
from cdc.jsontext import dumps
from cdc.timespec import parse_duration, parse_since
from tests.auth import make_token
from tests.conftest import drop_database, with_dbname
from tests.live import Server, problem_of
from tests.sequencing import sequence_all

ROOT = Path(__file__).resolve().parent.parent

SETUP = """
CREATE TABLE ints (id int PRIMARY KEY, v text, n int);
CREATE TABLE uids (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), v text);
CREATE TABLE texts (code text PRIMARY KEY, v text);
CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
SELECT pgtide.track_v1('ints'), pgtide.track_v1('uids'), pgtide.track_v1('texts'),
       pgtide.track_v1('pairs');
"""
ACTORS = ["alice", "bob", "carol", "dave", "erin", "frank", None]
ORIGINS = ["branch-1", "branch-2", "branch-3", "api", None]
LONG_ID = 100_000  # the ints row the long transaction writes


class Writer:
    """Random committed changes to the four tables, remembering which rows exist."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int) -> None:
        self.conn = conn
        self.rnd = random.Random(seed)
        self.live: dict[str, list[Any]] = {"ints": [], "uids": [], "texts": [], "pairs": []}
        self.n = 0

    def txn(self) -> None:
        actor, origin = self.rnd.choice(ACTORS), self.rnd.choice(ORIGINS)
        with self.conn.transaction():
            if actor:
                self.conn.execute("SELECT set_config('pgtide.actor', %s, true)", (actor,))
            if origin:
                self.conn.execute("SELECT set_config('pgtide.origin', %s, true)", (origin,))
            for _ in range(self.rnd.randint(1, 3)):
                self.change()

    def change(self) -> None:
        table = self.rnd.choice(list(self.live))
        rows = self.live[table]
        what = self.rnd.random()
        self.n += 1
        v = f"v{self.n}"
        if not rows or what < 0.45:
            self.insert(table, v)
        elif what < 0.85:
            key = self.rnd.choice(rows)
            where, args = self.where(table, key)
            self.conn.execute(
                sql.SQL("UPDATE {} SET v = %s WHERE ").format(sql.Identifier(table)) + where,
                (v, *args),
            )
        else:
            key = rows.pop(self.rnd.randrange(len(rows)))
            where, args = self.where(table, key)
            self.conn.execute(
                sql.SQL("DELETE FROM {} WHERE ").format(sql.Identifier(table)) + where, args
            )

    def insert(self, table: str, v: str) -> None:
        if table == "ints":
            key: Any = self.n
            self.conn.execute("INSERT INTO ints VALUES (%s, %s, %s)", (key, v, self.n % 7))
        elif table == "uids":
            key = uuid.uuid4()
            self.conn.execute("INSERT INTO uids VALUES (%s, %s)", (key, v))
        elif table == "texts":
            key = f"code-{self.n}"
            self.conn.execute("INSERT INTO texts VALUES (%s, %s)", (key, v))
        else:
            key = (self.n % 5, f"b{self.n}")
            self.conn.execute("INSERT INTO pairs VALUES (%s, %s, %s)", (*key, v))
        self.live[table].append(key)

    @staticmethod
    def where(table: str, key: Any) -> tuple[sql.Composable, tuple[Any, ...]]:
        if table == "pairs":
            return sql.SQL("a = %s AND b = %s"), tuple(key)
        return sql.SQL("{} = %s").format(sql.Identifier("code" if table == "texts" else "id")), (
            key,
        )


@contextlib.contextmanager
def clone(server_url: str, template_db: str) -> Iterator[str]:
    """A fresh migrated database for a whole module, dropped afterwards."""
    name = f"pgtide_audit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template_db)
            )
        )
    try:
        yield with_dbname(server_url, name)
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="module")
def audit_url(server_url: str, template_db: str) -> Iterator[str]:
    """A database with a generated, sequenced log (shared by this module's read-only tests)."""
    with clone(server_url, template_db) as url:
        with db.connect(url) as conn, db.connect(url, autocommit=False) as long:
            conn.execute(SETUP.encode())
            w = Writer(conn, seed=5)
            long.execute("SELECT set_config('pgtide.actor', 'lonely', true)")
            long.execute("INSERT INTO ints VALUES (%s, 'long', 0)", (LONG_ID,))
            for phase in range(3):
                for _ in range(50):
                    w.txn()
                if phase == 0:
                    conn.execute("SELECT pgtide.publish('alerts', '{\"level\": 2}')")
                if phase == 1:
                    conn.execute("TRUNCATE texts")
                    w.live["texts"].clear()
                if phase == 2:
                    long.commit()  # written in phase 0, sequenced in the last phase
                sequence_all(url)
        yield url


@pytest.fixture
def conn(audit_url: str) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(audit_url) as c:
        yield c


def oracle(conn: psycopg.Connection[Any], p: dict[str, str]) -> list[int]:
    """The seqs a filter should return, by a direct query written independently."""
    conds: list[sql.Composable] = [sql.SQL("true")]
    args: list[Any] = []
    if "table" in p:
        conds.append(sql.SQL("l.table_name = ANY (%s)"))
        args.append(p["table"].split(","))
    if "op" in p:
        conds.append(sql.SQL("l.op = ANY (%s)"))
        args.append([o.upper() for o in p["op"].split(",")])
    if "pk" in p:
        conds.append(sql.SQL("l.pk = %s::jsonb"))
        args.append(p["oracle_pk"])
    for name in ("actor", "origin"):
        if name in p:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier("l", name)))
            args.append(p[name])
    if "txid" in p:
        conds.append(sql.SQL("l.txid = %s::xid8"))
        args.append(p["txid"])
    if "from" in p:
        conds.append(sql.SQL("l.at >= %s::timestamptz"))
        args.append(p["from"])
    if "to" in p:
        conds.append(sql.SQL("l.at < %s::timestamptz"))
        args.append(p["to"])
    desc = p.get("order") == "desc"
    if "after" in p:
        conds.append(sql.SQL("o.seq < %s" if desc else "o.seq > %s"))
        args.append(int(p["after"]))
    query = sql.SQL(
        "SELECT o.seq FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id "
        "WHERE {} ORDER BY o.seq "
    ).format(sql.SQL(" AND ").join(conds)) + sql.SQL("DESC" if desc else "ASC")
    return [r[0] for r in conn.execute(query, args).fetchall()]


def walk(conn: psycopg.Connection[Any], p: dict[str, str]) -> list[int]:
    """Every page of the listing, following `next`; checks each page's size."""
    query = parse_query((k, v) for k, v in p.items() if k != "oracle_pk")
    seqs: list[int] = []
    while True:
        page = list_changes(conn, query)
        assert len(page.changes) <= query.limit
        seqs += [c.seq for c in page.changes]
        if page.next_cursor is None:
            return seqs
        assert len(page.changes) == query.limit and page.next_cursor == seqs[-1]
        query = replace(query, after=page.next_cursor)


def times(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Instants that cut the log: thirds of it, and just after the long transaction's row."""
    ats = [r[0] for r in conn.execute("SELECT at FROM pgtide.sync_log ORDER BY at").fetchall()]
    long_at = conn.execute("SELECT at FROM pgtide.sync_log "
                           "WHERE pk = %s::jsonb AND table_name = 'ints'",
                           (json.dumps({"id": LONG_ID}),)).fetchone()  # fmt: skip
    assert long_at is not None
    return {
        "t1": ats[len(ats) // 3].isoformat(),
        "t2": ats[2 * len(ats) // 3].isoformat(),
        "long": (long_at[0] + timedelta(microseconds=1)).isoformat(),
    }


def sample_keys(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Keys with several changes, one per table, and a txid with several rows."""
    keys = {}
    for table in ("ints", "uids", "texts", "pairs"):
        row = conn.execute(
            "SELECT pk FROM pgtide.sync_log WHERE table_name = %s AND pk IS NOT NULL "
            "GROUP BY pk ORDER BY count(*) DESC, pk::text LIMIT 1",
            (table,),
        ).fetchone()
        assert row is not None
        keys[table] = row[0]
    txid = conn.execute(
        "SELECT txid::text FROM pgtide.sync_log GROUP BY txid ORDER BY count(*) DESC LIMIT 1"
    ).fetchone()
    assert txid is not None
    keys["txid"] = txid[0]
    return keys


def filter_cases(conn: psycopg.Connection[Any]) -> list[dict[str, str]]:
    """Single filters, pairs and triples, each in both orders, with small pages."""
    t, k = times(conn), sample_keys(conn)
    ints_id, uid = k["ints"]["id"], k["uids"]["id"]

    def pk(table: str, raw: str) -> dict[str, str]:
        return {"table": table, "pk": raw, "oracle_pk": json.dumps(k[table])}

    base: list[dict[str, str]] = [
        {},
        {"table": "ints"},
        {"table": "uids,pairs"},
        {"table": "alerts"},
        {"op": "update"},
        {"op": "delete,truncate"},
        {"op": "message"},
        {"actor": "alice"},
        {"actor": "lonely"},
        {"actor": "nobody"},
        {"origin": "branch-2"},
        {"txid": k["txid"]},
        pk("ints", str(ints_id)),
        pk("ints", json.dumps(k["ints"])),
        pk("uids", uid.upper()),
        pk("texts", k["texts"]["code"]),
        pk("pairs", json.dumps(k["pairs"])),
        {"from": t["t1"]},
        {"to": t["t2"]},
        {"to": t["long"]},
        {"from": t["t1"], "to": t["t2"]},
        {"table": "ints", "actor": "bob"},
        {"actor": "carol", "origin": "branch-1"},
        {"op": "insert", "from": t["t2"]},
        {"table": "uids", "op": "update,delete", "to": t["t2"]},
        {"actor": "alice", "from": t["t1"], "to": t["t2"]},
        {"origin": "api", "op": "delete"},
        {**pk("ints", str(ints_id)), "to": t["t2"]},
        {"table": "ints", "to": t["long"], "actor": "lonely"},
        {"table": "pairs", "origin": "branch-3", "op": "insert,update"},
        {"txid": k["txid"], "table": "ints"},
    ]
    cases = []
    for p in base:
        cases.append({**p, "limit": "7"})
        cases.append({**p, "limit": "5", "order": "desc"})
    return cases


def test_every_filter_and_combination_returns_exactly_what_sql_returns(
    conn: psycopg.Connection[Any],
) -> None:
    cases = filter_cases(conn)
    nonempty = 0
    for p in cases:
        want = oracle(conn, p)
        assert walk(conn, p) == want, p
        nonempty += bool(want)
    assert nonempty >= len(cases) - 4  # only the deliberately empty ones are empty


def test_the_long_transaction_counts_by_when_it_wrote_not_when_it_was_sequenced(
    conn: psycopg.Connection[Any],
) -> None:
    t = times(conn)
    before_long = walk(conn, {"to": t["long"], "actor": "lonely"})
    assert len(before_long) == 1
    last = conn.execute("SELECT max(seq) FROM pgtide.sync_order").fetchone()
    assert last is not None and before_long[0] > int(last[0]) - 200  # sequenced late
    assert walk(conn, {"from": t["long"], "actor": "lonely"}) == []


def test_after_continues_in_either_direction(conn: psycopg.Connection[Any]) -> None:
    middle = oracle(conn, {})[len(oracle(conn, {})) // 2]
    for p in ({"after": str(middle)}, {"after": str(middle), "order": "desc", "table": "ints"}):
        assert walk(conn, p) == oracle(conn, p)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"op": "upsert"}, "unknown op 'upsert'"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01"}, "to"),
        ({"after": "abc"}, "cursor"),
        ({"after": "-1"}, "cursor"),
        ({"after": "007"}, "leading zeros"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"order": "sideways"}, "order"),
        ({"txid": "12a"}, "txid"),
        ({"pk": "1"}, "needs exactly one table"),
        ({"table": "a,b", "pk": "1"}, "needs exactly one table"),
        ({"colour": "red"}, "unknown parameter 'colour'"),
        ({"actor": ""}, "actor"),
    ],
)
def test_bad_filters_are_refused_with_a_reason(params: dict[str, str], needle: str) -> None:
    with pytest.raises((FilterError, CursorError), match=needle):
        parse_query(params.items())


def test_bad_keys_are_refused_with_a_reason(conn: psycopg.Connection[Any]) -> None:
    for table, raw, needle in [
        ("uids", "not-a-uuid", "not a uuid"),
        ("ints", "x1", "not a number"),
        ("pairs", "1", "columns a, b"),
        ("gone", "1", "not tracked"),
        ("ints", "{bad json", "not valid JSON"),
        ("ints", "{}", "non-empty JSON object"),
    ]:
        with pytest.raises(FilterError, match=needle):
            list_changes(conn, parse_query([("table", table), ("pk", raw)]))


def test_a_parameter_given_twice_is_refused() -> None:
    with pytest.raises(FilterError, match="twice"):
        parse_query([("actor", "a"), ("actor", "b")])


# --- history -----------------------------------------------------------------------


def story(url: str) -> tuple[str, str]:
    """A uids row created, updated twice (one no-op update in between), deleted and
    created again; an ints row then removed by TRUNCATE. Returns the uuid and the ints id."""
    rid = str(uuid.uuid4())
    with db.connect(url) as conn:
        conn.execute(SETUP.encode())
        steps = [
            ("alice", "INSERT INTO uids VALUES (%s, 'new')"),
            ("bob", "UPDATE uids SET v = 'paid' WHERE id = %s"),
            ("bob", "UPDATE uids SET v = 'paid' WHERE id = %s"),  # no change: not logged
            ("carol", "UPDATE uids SET v = 'shipped' WHERE id = %s"),
            ("dave", "DELETE FROM uids WHERE id = %s"),
            ("erin", "INSERT INTO uids VALUES (%s, 'again')"),
        ]
        for actor, stmt in steps:
            with conn.transaction():
                conn.execute("SELECT set_config('pgtide.actor', %s, true)", (actor,))
                conn.execute(stmt, (rid,))
        conn.execute("INSERT INTO ints VALUES (7, 'x', 1)")
        conn.execute("TRUNCATE ints")
        conn.execute("INSERT INTO ints VALUES (8, 'y', 1)")
    sequence_all(url)
    return rid, "7"


@pytest.fixture(scope="module")
def story_db(server_url: str, template_db: str) -> Iterator[tuple[str, str]]:
    """A database holding `story` (shared by the history tests): (url, the uids row's id)."""
    with clone(server_url, template_db) as url:
        rid, _ = story(url)
        yield url, rid


@pytest.fixture(scope="module")
def story_server(story_db: tuple[str, str]) -> Iterator[tuple[Server, str]]:
    url, rid = story_db
    srv = Server(url).start()
    try:
        yield srv, rid
    finally:
        srv.stop()


def test_history_tells_a_rows_story_with_before_and_after(story_db: tuple[str, str]) -> None:
    url, rid = story_db
    with db.connect(url) as conn:
        entries = history(conn, "uids", {"id": rid})
    got = [(e.change.op, e.change.actor, e.diff) for e in entries]
    assert got == [
        ("INSERT", "alice", {"id": (None, rid), "v": (None, "new")}),
        ("UPDATE", "bob", {"v": ("new", "paid")}),
        ("UPDATE", "carol", {"v": ("paid", "shipped")}),
        ("DELETE", "dave", {"id": (rid, None), "v": ("shipped", None)}),
        ("INSERT", "erin", {"id": (None, rid), "v": (None, "again")}),
    ]
    seqs = [e.change.seq for e in entries]
    assert seqs == sorted(seqs)


def test_history_shows_the_truncate_that_removed_a_row(story_db: tuple[str, str]) -> None:
    with db.connect(story_db[0]) as conn:
        entries = history(conn, "ints", {"id": 7})
        other = history(conn, "ints", {"id": 8})
    assert [(e.change.op, e.diff) for e in entries] == [
        ("INSERT", {"id": (None, 7), "n": (None, 1), "v": (None, "x")}),
        ("TRUNCATE", {"id": (7, None), "n": (1, None), "v": ("x", None)}),
    ]
    assert [e.change.op for e in other] == ["INSERT"]  # created after the TRUNCATE


def test_history_and_sync_log_over_http(
    story_server: tuple[Server, str], story_db: tuple[str, str]
) -> None:
    srv, rid = story_server
    with httpx.Client(base_url=srv.base, timeout=10) as http:
        r = http.get(f"/api/uids/{rid.upper()}/history")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["pk"] == {"id": rid}
        assert [h["op"] for h in body["history"]] == ["INSERT", "UPDATE", "UPDATE", "DELETE",
                                                       "INSERT"]  # fmt: skip
        upd = body["history"][1]
        assert upd["changed"] == ["v"] and upd["changes"] == {
            "v": {"before": "new", "after": "paid"}
        }
        assert upd["actor"] == "bob" and upd["cursor"] == str(upd["seq"])

        for path, status in [
            (f"/api/uids/{uuid.uuid4()}/history", 404),  # never existed
            ("/api/nosuch/1/history", 404),
            ("/api/uids/not-a-uuid/history", 400),
            (f"/api/orders/{uuid.uuid4()}/history", 404),  # ours, not the resource routes'
        ]:
            resp = http.get(path)
            assert resp.status_code == status, (path, resp.text)
            problem_of(resp)

        # Paging by `next`, a URL as in every listing (and the Link header), gives the whole
        # filtered log; `next_cursor` is the `after` in it, null with `next` on the last page.
        url: str | None = "/api/sync-log?table=uids&limit=2"
        seqs: list[int] = []
        while url is not None:
            resp = http.get(url)
            assert resp.status_code == 200, resp.text
            page = resp.json()
            seqs += [c["seq"] for c in page["changes"]]
            url = page["next"]
            if url is None:
                assert page["next_cursor"] is None and "link" not in resp.headers
            else:
                assert resp.headers["link"] == f'<{url}>; rel="next"'
                assert page["next_cursor"] == str(seqs[-1]) and url.startswith("/api/sync-log?")
                assert f"after={page['next_cursor']}" in url
        with db.connect(story_db[0]) as conn:
            assert seqs == oracle(conn, {"table": "uids"})


def test_bad_filters_get_400_problem_json_over_http(story_server: tuple[Server, str]) -> None:
    srv, _ = story_server
    with httpx.Client(base_url=srv.base, timeout=10) as http:
        for query in [
            "op=upsert",
            "from=last-tuesday",
            "to=2024-02-30T00:00:00",
            "after=x1",
            "limit=1001",
            "limit=-5",
            "order=up",
            "nope=1",
            "table=uids&table=ints",
            "table=uids&pk=not-a-uuid",
            "pk=1",
        ]:
            resp = http.get(f"/api/sync-log?{query}")
            assert resp.status_code == 400, (query, resp.text)
            problem_of(resp)


# --- CLI ---------------------------------------------------------------------------


def run_cli(url: str, *args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), env={"DATABASE_URL": url}, catch_exceptions=False)
    return result


def expected_records(conn: psycopg.Connection[Any], p: dict[str, str]) -> list[dict[str, Any]]:
    """The oracle's rows as the JSON objects the CLI prints."""
    seqs = oracle(conn, p)
    q = parse_query([("limit", "1000"), ("order", p.get("order", "asc"))])
    by_seq = {c.seq: c for c in list_changes(conn, q).changes}
    return [json.loads(dumps(change_record(by_seq[s]))) for s in seqs]


def test_cli_jsonl_and_csv_parse_back_to_the_same_rows(
    audit_url: str, conn: psycopg.Connection[Any]
) -> None:
    args = ["audit", "--table", "ints,pairs", "--op", "update,insert", "--order", "asc",
            "--limit", "9", "--all"]  # fmt: skip
    want = expected_records(conn, {"table": "ints,pairs", "op": "update,insert"})
    assert len(want) > 20

    jsonl = run_cli(audit_url, *args, "--format", "jsonl")
    assert jsonl.exit_code == 0, jsonl.output
    got = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert got == want

    out = run_cli(audit_url, *args, "--format", "csv")
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [read_csv_record(r) for r in rows] == want


def test_cli_table_pages_and_says_how_to_go_on(audit_url: str) -> None:
    result = run_cli(audit_url, "audit", "--actor", "alice", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert "seq" in result.stdout and "alice" in result.stdout
    assert "more: add --after" in result.stderr


def test_cli_since_takes_durations_and_refuses_nonsense(audit_url: str) -> None:
    recent = run_cli(audit_url, "audit", "--since", "2h", "--format", "jsonl", "--all")
    assert recent.exit_code == 0 and len(recent.stdout.splitlines()) > 100
    none = run_cli(audit_url, "audit", "--until", "7d", "--format", "jsonl")
    assert none.exit_code == 0 and none.stdout == ""
    bad = run_cli(audit_url, "audit", "--since", "soon")
    assert bad.exit_code == 2 and "--since" in bad.output


def test_cli_history_prints_a_readable_diff(story_db: tuple[str, str]) -> None:
    url, rid = story_db
    result = run_cli(url, "audit", "history", "uids", rid)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "5 change(s)" in text
    assert '~ v  "new" → "paid"' in text and '+ v   "again"' in text
    assert "by carol" in text
    missing = run_cli(url, "audit", "history", "uids", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "no recorded change" in missing.output


NARROW = """
CREATE TABLE purchase_orders (id uuid PRIMARY KEY, status text, quantity int, note text,
                             distributor text, due date, updated_at timestamptz);
CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
SELECT pgtide.track_v1('purchase_orders'), pgtide.track_v1('pairs');
SELECT set_config('pgtide.actor', 'import-job-for-the-north-region@pharma.example.org', false),
       set_config('pgtide.origin', 'tablet-3/branch-2/warehouse-east', false);
"""


def test_cli_table_reads_at_80_columns(db_url: str) -> None:
    """One line per change, none wider than the terminal, the key columns all there."""
    rid = uuid.uuid4()
    with db.connect(db_url) as conn:
        conn.execute(NARROW)
        conn.execute("INSERT INTO purchase_orders VALUES (%s, 'new', 1, 'x', 'Pharma', "
                     "'2030-01-01', now())", (rid,))  # fmt: skip
        conn.execute("UPDATE purchase_orders SET status = 'sent', quantity = 2, note = 'y', "
                     "distributor = 'Other', due = '2030-02-01', updated_at = now()")  # fmt: skip
        conn.execute("INSERT INTO pairs VALUES (7, %s, '{\"nested\": [1, 2, 3]}')", ("b" * 60,))
        conn.execute("DELETE FROM purchase_orders")
        conn.execute("SELECT pgtide.publish('alerts', '{\"level\": 2}')")
    sequence_all(db_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGTIDE_")}
    env |= {"DATABASE_URL": db_url, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "audit", "--order", "asc"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(cell_len(line) <= 80 for line in lines), result.stdout
    header, rule, *rows = lines
    assert set(rule) <= {"━", "┿"}, result.stdout
    assert header.split() == ["seq", "│", "at", "(UTC)", "│", "table", "│", "op", "│", "pk",
                              "│", "actor"], result.stdout  # fmt: skip
    want = [("purchase_orders", "INSERT"), ("purchase_orders", "UPDATE"), ("pairs", "INSERT"),
            ("purchase_orders", "DELETE"), ("alerts", "MESSAGE")]  # fmt: skip
    assert len(rows) == len(want), result.stdout  # one line each: nothing wrapped
    for seq, (row, (table, op)) in enumerate(zip(rows, want, strict=True), start=1):
        cells = [cell.strip() for cell in row.split("│")]
        assert cells[0] == str(seq) and cells[2:4] == [table, op], row
        assert len(cells[1]) == len("2030-01-01 10:00:00"), row  # no milliseconds, no wrap
    assert str(rid)[:8] + "…" in rows[0] and "import-job" in rows[0]
    assert '{"a":7,' in rows[2]  # a long JSON key, cut


# --- roles -------------------------------------------------------------------------


ROLES = ("pgtide_writer", "pgtide_api", "pgtide_auditor", "pgtide_retention")


@pytest.fixture
def roles_db(db_url: str) -> Iterator[str]:
    """The test's database; afterwards the (cluster-wide) roles are dropped again if no
    other database still grants them anything."""
    yield db_url
    with db.connect(db_url) as conn:
        conn.execute("RESET ROLE")
        for role in ROLES:
            ident = sql.Identifier(role)
            with contextlib.suppress(psycopg.Error):
                conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


def test_the_documented_api_role_cannot_update_or_delete_the_log(roles_db: str) -> None:
    db_url = roles_db
    roles = (ROOT / "schema" / "roles.sql").read_text()
    with db.connect(db_url) as conn:
        conn.execute(roles.encode())
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT pgtide.track_v1('t')")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON t TO pgtide_api")
        conn.execute("SET ROLE pgtide_api")
        conn.execute("INSERT INTO t VALUES (1, 'a')")  # capture writes pgtide.sync_log as this role
        conn.execute("UPDATE t SET v = 'b' WHERE id = 1")
        row = conn.execute("SELECT count(*), min(db_role) FROM pgtide.sync_log").fetchone()
        assert row == (2, "pgtide_api")
        for stmt in ["UPDATE pgtide.sync_log SET actor = 'x'", "DELETE FROM pgtide.sync_log",
                     "UPDATE pgtide.sync_order SET seq = seq", "DELETE FROM pgtide.sync_order",
                     "DELETE FROM pgtide.sync_seal", "TRUNCATE pgtide.sync_log"]:  # fmt: skip
            denied = pytest.raises(errors.InsufficientPrivilege, match="permission denied")
            with denied, conn.transaction():
                # Even with the retention switch on: the privilege is missing.
                conn.execute("SET LOCAL pgtide.retention = 'on'")
                conn.execute(stmt)
        conn.execute("RESET ROLE")
        conn.execute("SET ROLE pgtide_auditor")
        assert conn.execute("SELECT count(*) FROM pgtide.sync_log").fetchone() == (2,)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO pgtide.sync_log (schema_name, table_name, op) "
                "VALUES ('a','b','INSERT')"
            )
        conn.execute("RESET ROLE")
        conn.execute("SET ROLE pgtide_retention")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("UPDATE pgtide.sync_log SET actor = 'x'")
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            conn.execute("DELETE FROM pgtide.sync_log")  # the guard still wants the switch
        conn.execute("RESET ROLE")


# --- pure parts --------------------------------------------------------------------


def test_durations_and_instants() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration(" 2W ") == timedelta(weeks=2)
    for bad in ("", "3", "h", "1.5h", "-2h", "2 h", "2y"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    assert parse_since("2h", now) == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert parse_since("2026-04-30T08:00:00", now) == datetime(2026, 4, 30, 8, tzinfo=UTC)
    assert parse_since("2026-04-30T08:00:00+02:00", now).utcoffset() == timedelta(hours=2)
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("soon", now)


def test_a_query_survives_its_next_link() -> None:
    q = parse_query(
        [("table", "ints"), ("op", "update,delete"), ("pk", "7"), ("actor", "a b"),
         ("origin", "o&x"), ("txid", "123"), ("from", "2026-01-01T00:00:00Z"),
         ("to", "2026-01-02T00:00:00+01:00"), ("after", "5"), ("limit", "3"), ("order", "desc")]
    )  # fmt: skip
    assert parse_query(q.to_params().items()) == q


def test_audit_routes_need_the_audit_scope_and_an_unpinned_token(db_url: str) -> None:
    with db.connect(db_url) as conn:
        row = conn.execute(
            "INSERT INTO branches (code, name) VALUES ('A', 'A') RETURNING id::text"
        ).fetchone()
    assert row is not None
    branch = row[0]
    tokens_by_name = {
        "reader": make_token(db_url, "reader", "read"),
        "auditor": make_token(db_url, "auditor", "audit"),
        "pinned": make_token(db_url, "pinned", "audit", branch),
    }
    sequence_all(db_url)
    srv = Server(db_url, auth=True).start()
    try:
        with httpx.Client(base_url=srv.base, timeout=10) as http:
            for path in ("/api/sync-log", f"/api/branches/{branch}/history"):
                assert http.get(path).status_code == 401
                for name, status in (("reader", 403), ("pinned", 403), ("auditor", 200)):
                    auth = {"Authorization": f"Bearer {tokens_by_name[name]}"}
                    resp = http.get(path, headers=auth)
                    assert resp.status_code == status, (path, name, resp.text)
                    if status != 200:
                        problem_of(resp)
    finally:
        srv.stop()
