"""Hostile filter values and row values: compared as PostgreSQL compares them, and one
subscriber's failure ends that subscriber only, never the feed (issue 13)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc import db, hub
from cdc.errors import FilterError
from cdc.filters import StreamFilter, TableInfo, build_filter
from cdc.reader import Change
from tests.live import Server, Stream


@pytest.fixture
def server(db_url: str) -> Iterator[Server]:
    srv = Server(db_url).start()
    yield srv
    srv.stop()


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(db_url) as conn:  # db.connect loads row images as the server does
        yield conn


def until_truncate(s: Stream) -> list[dict[str, Any]]:
    """The changes a stream receives before the TRUNCATE that ends a test's writes."""
    out = []
    while (change := s.changes(1)[0])["op"] != "TRUNCATE":
        out.append(change)
    return out


def ids_until_truncate(s: Stream) -> list[int]:
    return [c["pk"]["id"] for c in until_truncate(s)]


def ready(server: Server) -> int:
    return httpx.get(f"{server.base}/ready", timeout=5).status_code


# ---- the demo's orders: total=lt.NaN ------------------------------------------------


def test_a_nan_filter_matches_as_postgresql_and_the_feed_goes_on(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    b = sql.execute("INSERT INTO branches (code, name) VALUES ('B', 'B') RETURNING id").fetchone()
    assert b is not None
    c = sql.execute(
        "INSERT INTO clients (branch_id, full_name) VALUES (%s, 'C') RETURNING id", (b[0],)
    ).fetchone()
    assert c is not None
    paths = {
        "plain": "/events?tables=orders",
        "lt_nan": "/events?tables=orders&total=lt.NaN",
        "eq_nan": "/events?tables=orders&total=eq.nan",
        "gt_nan": "/events?tables=orders&total=gt.NaN",
        "inf": "/events?tables=orders&total=lte.Infinity",
    }
    streams = {name: Stream(server.base, path) for name, path in paths.items()}
    for s in streams.values():
        s.until("synced")
    # numeric(12,2) holds NaN, and NaN >= 0 passes the CHECK: PostgreSQL's own order.
    totals = ["1.50", "0", "NaN", "9999999999.99"]
    for t in totals:
        sql.execute(
            "INSERT INTO orders (branch_id, client_id, total) VALUES (%s, %s, %s::numeric)",
            (b[0], c[0], t),
        )
    sql.execute("TRUNCATE orders")
    got = {name: until_truncate(s) for name, s in streams.items()}
    assert [e["row"]["total"] for e in got["plain"]] == [1.5, 0, "NaN", 9999999999.99]
    assert [e["row"]["total"] for e in got["lt_nan"]] == [1.5, 0, 9999999999.99]
    assert [e["row"]["total"] for e in got["eq_nan"]] == ["NaN"]
    assert got["gt_nan"] == [] and got["inf"] == got["lt_nan"]
    # The listener and the hub moved on: /ready stays 200 and the next write arrives.
    assert ready(server) == 200
    sql.execute("INSERT INTO orders (branch_id, client_id, total) VALUES (%s, %s, 5)", (b[0], c[0]))
    for name in ("plain", "lt_nan", "inf"):
        assert streams[name].changes(1)[0]["row"]["total"] == 5
    for s in streams.values():
        s.close()


# ---- a table of extreme values written by plain SQL ---------------------------------

ROWS = [
    (1, "NaN", "infinity"),
    (2, "Infinity", "-infinity"),
    (3, "-Infinity", "10000-01-01 00:00:00+00"),
    (4, "1.5", "0001-01-01 00:00:00+00 BC"),
    (5, "1e-999", "294276-12-31 23:59:59.999999+00"),
    (6, "1e999", "4714-11-24 00:00:00+00 BC"),
    (7, "0.1000000000000000000001", "2019-12-31 19:00:00+00"),
    (8, None, None),
    (9, "-1e-999", "2020-01-01 00:00:00+05:00"),
    (10, "0.1", "2020-01-01 00:00:00+00"),
]
SQL_OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
# (column, filter as written): each one a stream, checked against PostgreSQL's WHERE.
FILTERS = [
    ("n", "lt.NaN"), ("n", "eq.NaN"), ("n", "neq.NaN"), ("n", "gt.1e998"),
    ("n", "gte.Infinity"), ("n", "lt.-1e-1000"), ("n", "gt.0"), ("n", "lte.1e-999"),
    ("n", "eq.0.1"), ("n", "in.(NaN,1.5, -Infinity)"), ("n", "gt.0.1"),
    ("ts", "gt.9999-12-31T23:59:59Z"), ("ts", "eq.infinity"), ("ts", "lt.0001-01-01"),
    ("ts", "gte.-infinity"), ("ts", "eq.2019-12-31T19:00:00Z"),
    ("ts", "lt.2020-01-01T00:00:00+05:00"), ("ts", "in.(infinity,2020-01-01)"),
]  # fmt: skip


def q(f: tuple[str, str]) -> str:
    """A filter as a query parameter (`+` of a zone must not become a space)."""
    return urlencode([f])


def _where(column: str, flt: str) -> tuple[str, list[str]]:
    op, _, raw = flt.partition(".")
    typ = "numeric" if column == "n" else "timestamptz"
    if op == "in":
        items = raw[1:-1].split(",")
        return f"{column} IN ({', '.join(f'%s::{typ}' for _ in items)})", items
    return f"{column} {SQL_OPS[op]} %s::{typ}", [raw]


@pytest.fixture
def extremes(sql: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    sql.execute("SET TIME ZONE 'UTC'")  # a filter value without zone is UTC, as in pgtide
    sql.execute("CREATE TABLE t (id int PRIMARY KEY, n numeric, ts timestamptz, txt text)")
    sql.execute("SELECT pgtide.track_v1('t')")
    return sql


def test_extreme_row_values_are_delivered_and_filtered_as_postgresql_compares(
    server: Server, extremes: psycopg.Connection[Any]
) -> None:
    sql = extremes
    plain = Stream(server.base, "/events?tables=t")
    plain.until("synced")
    before = plain.last_id
    live = {f: Stream(server.base, f"/events?tables=t&{q(f)}") for f in FILTERS}
    for s in live.values():
        s.until("synced")
    for row in ROWS:
        sql.execute("INSERT INTO t (id, n, ts) VALUES (%s, %s::numeric, %s::timestamptz)", row)
    expected = {}
    for column, flt in FILTERS:
        cond, args = _where(column, flt)
        found = sql.execute(f"SELECT id FROM t WHERE {cond} ORDER BY id", args).fetchall()
        expected[(column, flt)] = [r[0] for r in found]
    # The snapshot reads current rows through the same filters.
    for f in FILTERS:
        snap = Stream(server.base, f"/events?tables=t&snapshot=true&{q(f)}")
        assert sorted(e["pk"]["id"] for e in snap.until("synced")) == expected[f], f
        snap.close()
    sql.execute("TRUNCATE t")
    assert ids_until_truncate(plain) == [r[0] for r in ROWS]
    for f, s in live.items():
        assert ids_until_truncate(s) == expected[f], f
        s.close()
    # Catch-up from the log applies the same rule.
    for f in FILTERS:
        back = Stream(server.base, f"/events?tables=t&since={before}&{q(f)}")
        assert [e["pk"]["id"] for e in back.until("synced") if e["op"] == "INSERT"] == expected[f]
        back.close()
    assert ready(server) == 200
    plain.close()


# ---- the table test against PostgreSQL itself ---------------------------------------

OPERATORS = ["eq", "neq", "lt", "lte", "gt", "gte", "in"]
NUMERIC_ROWS = [
    "NaN", "Infinity", "-Infinity", "0", "-0", "1", "-1", "12.50", "0.1", "1e999", "1e-999",
    "-1e-999", "0.1000000000000000000001", "123456789012345678901234567890", None,
]  # fmt: skip
NUMERIC_VALUES = [
    "NaN", "nan", " NaN ", "-NaN", "Infinity", "-Infinity", "inf", "+inf", "-INF", "1e999",
    "1e-999", "-1e999", "1e131071", "1e131072", "1e-16383", "1e-16384", "0e-99999", "0e99999",
    "1\x00", "\x00", "²", "١٢", "1e", "", ".", ".5", "5.", "+.5e+3", "12.50", "0.1", "-0",
    "0.1000000000000000000001", "1 2", "0.1e1", "12.5e-1", "\u0661", "1e999999", "abc", "Infinityx",
]  # fmt: skip
TIME_ROWS = [
    "infinity", "-infinity", "2020-01-01 00:00:00+00", "10000-01-01 00:00:00+00",
    "0001-01-01 00:00:00+00 BC", "294276-12-31 23:59:59.999999+00",
    "4714-11-24 00:00:00+00 BC", "1970-01-01 00:00:00.000001+00", "2020-06-01 12:30:00+05:30",
    "2019-12-31 23:59:59.999999+00", None,
]  # fmt: skip
TIME_VALUES = [
    "infinity", "-infinity", "Infinity", " infinity ", "epoch", "2020-01-01",
    "2020-01-01T00:00:00Z", "2020-01-01 00:00:00+00", "10000-01-01", "10000-01-01T00:00:00+00:00",
    "0001-01-01 BC", "0001-12-31T23:59:59.999999+00:00 BC", "294276-12-31T23:59:59.999999Z",
    "294277-01-01", "4714-11-24 BC", "4714-11-23 BC", "2020-02-30", "2020-02-29", "2021-02-29",
    "2020-13-01", "0000-01-01", "2020-01-01T24:00:00Z", "2020-01-01T24:00:01Z",
    "2020-01-01T23:59:60Z", "2020-01-01T10:00+16:00", "2020-01-01T10:00+15:59",
    "2020-06-01T12:30:00+0530", "2020-06-01T07:00:00.5Z", "\x00", "2020-01-01\x00", "²",
    "٢٠٢٠-01-01", "", "99999-12-31", "2020-01-01T25:00Z", "1970-01-01T00:00:00.000001Z",
]  # fmt: skip
TEXT_ROWS = ["a", "B", "", "ä", "²", "١٢", "a b", "Z", "NaN", "10", "9", None]
TEXT_VALUES = ["a", "B", "", "NaN", "\x00", "a\x00b", "²", "١٢", "Ä", "10", "9", "zz"]

KINDS = {
    "numeric": ("number", NUMERIC_ROWS, NUMERIC_VALUES, ""),
    "timestamptz": ("time", TIME_ROWS, TIME_VALUES, ""),
    "text": ("text", TEXT_ROWS, TEXT_VALUES, ' COLLATE "C"'),
}


def postgres_says(
    conn: psycopg.Connection[Any], typ: str, row: str | None, op: str, values: list[str]
) -> bool | None:
    """PostgreSQL's `row op value` (False for NULL); None if it refuses a value."""
    collate = KINDS[typ][3]
    if op == "in":
        items = ", ".join(f"%s::{typ}" for _ in values)
        query = f"SELECT coalesce(%s::{typ}{collate} IN ({items}), false)"
    else:
        query = f"SELECT coalesce(%s::{typ}{collate} {SQL_OPS[op]} %s::{typ}, false)"
    try:
        found = conn.execute(query, [row, *values]).fetchone()  # type: ignore[arg-type]
    except (psycopg.DataError, ValueError):  # class 22, or NUL refused by the driver
        return None
    assert found is not None
    return bool(found[0])


def pgtide_says(
    conn: psycopg.Connection[Any], typ: str, row: str | None, op: str, values: list[str]
) -> bool | None:
    """pgtide's stream filter on the row image PostgreSQL writes; None if refused."""
    kind = KINDS[typ][0]
    catalog = {"public.t": TableInfo("public", "t", {"id": "number", "v": kind}, ("id",))}
    raw = f"in.({','.join(values)})" if op == "in" else f"{op}.{values[0]}"
    try:
        flt = build_filter(catalog, tables="t", ops=None, topics=None, columns=[("v", raw)])
    except FilterError:
        return None
    found = conn.execute(f"SELECT to_jsonb(%s::{typ})", [row]).fetchone()
    assert found is not None
    return flt.matches("INSERT", "public.t", {"id": 1, "v": found[0]}, None)


def check_like_postgres(
    conn: psycopg.Connection[Any], typ: str, row: str | None, op: str, values: list[str]
) -> None:
    pg = postgres_says(conn, typ, row, op, values)
    ours = pgtide_says(conn, typ, row, op, values)
    assert ours == pg, f"{row!r} {op} {values!r}: PostgreSQL says {pg}, pgtide {ours}"


def kind_cases(typ: str) -> st.SearchStrategy[tuple[str | None, str, list[str]]]:
    _, rows, values, _ = KINDS[typ]
    one = st.sampled_from(values)
    return st.tuples(
        st.sampled_from(rows),
        st.sampled_from(OPERATORS),
        st.lists(one, min_size=1, max_size=3),
    )


@pytest.fixture
def utc(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


EXAMPLES = settings(
    derandomize=True, max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)  # fmt: skip


@pytest.mark.parametrize("typ", sorted(KINDS))
def test_every_value_and_operator_compares_as_postgresql_or_is_refused(
    utc: psycopg.Connection[Any], typ: str
) -> None:
    # Every filter value against every row value once, then hypothesis mixes `in` lists.
    _, rows, values, _ = KINDS[typ]
    for row in rows:
        for op in OPERATORS:
            for value in values:
                check_like_postgres(utc, typ, row, op, [value])

    @EXAMPLES
    @given(kind_cases(typ))
    def mixed(case: tuple[str | None, str, list[str]]) -> None:
        row, op, chosen = case
        check_like_postgres(utc, typ, row, op, chosen if op == "in" else chosen[:1])

    mixed()


def test_forms_postgresql_16_added_are_refused_on_every_version() -> None:
    catalog = {"public.t": TableInfo("public", "t", {"v": "number", "ts": "time"}, ("v",))}
    refused = [("v", "eq.1_000"), ("v", "eq.0x10"), ("ts", "lt.now"), ("ts", "gt.today"),
               ("ts", "eq.+infinity")]  # fmt: skip
    for column, raw in refused:
        with pytest.raises(FilterError, match="is not a valid"):
            build_filter(catalog, tables="t", ops=None, topics=None, columns=[(column, raw)])


# ---- one subscriber's failure ends that subscriber only -----------------------------


def test_a_filter_that_fails_on_a_row_ends_its_stream_with_an_error_event_only(
    server: Server, extremes: psycopg.Connection[Any]
) -> None:
    sql = extremes
    failing = Stream(server.base, "/events?tables=t&n=gt.1")
    plain = Stream(server.base, "/events?tables=t")
    other = Stream(server.base, "/events?tables=t&txt=eq.x")
    for s in (failing, plain, other):
        s.until("synced")
    # The column changes type under the running server: its catalog still says numeric.
    sql.execute("ALTER TABLE t ALTER COLUMN n TYPE text")
    sql.execute("INSERT INTO t (id, n, txt) VALUES (1, 'not a number', 'x')")
    error = failing.next()
    assert error is not None and error.event == "error"
    problem = json.loads(error.data)
    assert problem == {
        "type": "about:blank", "title": "Internal Server Error", "status": 500,
        "detail": problem["detail"], "code": "filter_failed", "seq": problem["seq"],
    }  # fmt: skip
    assert "change" in problem["detail"] and "not a number" not in problem["detail"]
    assert failing.next() is None  # then the stream closes
    assert plain.changes(1)[0]["pk"]["id"] == 1 and other.changes(1)[0]["pk"]["id"] == 1
    sql.execute("INSERT INTO t (id, txt) VALUES (2, 'x')")
    assert plain.changes(1)[0]["pk"]["id"] == 2 and other.changes(1)[0]["pk"]["id"] == 2
    assert ready(server) == 200
    # Catch-up over the same change fails the same way, before `synced`.
    again = Stream(server.base, "/events?tables=t&n=gt.1&since=earliest")
    error = again.next()
    assert error is not None and error.event == "error"
    assert json.loads(error.data)["code"] == "filter_failed" and again.next() is None
    for s in (failing, plain, other, again):
        s.close()


# The server of the next test, with the encoder failing on rows whose txt is 'boom'.
_BOOM = """
import sys
import cdc.hub
real = cdc.hub.encode_change
def encode_change(c, **kw):
    if (c.new_row or {}).get("txt") == "boom":
        raise ValueError("boom cannot be encoded")
    return real(c, **kw)
cdc.hub.encode_change = encode_change
from api.cli import main
main()
"""


class BoomServer(Server):
    """`pgtide serve` whose hub cannot encode one kind of row."""

    def start(self, timeout: float = 30) -> BoomServer:
        import subprocess

        cmd = [sys.executable, "-c", _BOOM, "serve", "--no-migrate", "--port", str(self.port)]
        self.proc = subprocess.Popen([*cmd, *self.args], env=self.env)
        self.wait_ready(timeout)
        return self


def test_an_encoding_failure_ends_only_the_streams_that_selected_the_change(
    db_url: str, extremes: psycopg.Connection[Any]
) -> None:
    sql = extremes
    srv = BoomServer(db_url).start()
    try:
        wants = Stream(srv.base, "/events?tables=t")
        spared = Stream(srv.base, "/events?tables=t&txt=neq.boom")
        for s in (wants, spared):
            s.until("synced")
        sql.execute("INSERT INTO t (id, txt) VALUES (1, 'ok'), (2, 'boom'), (3, 'ok')")
        events = []
        while (ev := wants.next()) is not None:  # until the stream closes
            events.append(ev)
        # Row 1 arrives unless it shared the failing batch; nothing after the error.
        assert [json.loads(e.data)["pk"]["id"] for e in events[:-1]] in ([], [1])
        assert events[-1].event == "error"
        assert json.loads(events[-1].data)["code"] == "encode_failed"
        assert [e["pk"]["id"] for e in spared.changes(2)] == [1, 3]
        sql.execute("INSERT INTO t (id, txt) VALUES (4, 'ok')")
        assert spared.changes(1)[0]["pk"]["id"] == 4
        assert httpx.get(f"{srv.base}/ready", timeout=5).status_code == 200
        for s in (wants, spared):
            s.close()
    finally:
        srv.stop()


def _change(seq: int, branch: str) -> Change:
    row = {"id": seq, "branch_id": branch}
    return Change(seq, seq, "1", datetime.now(UTC), "public", "t", "UPDATE",
                  json.dumps({"id": seq}), json.dumps(row),
                  json.dumps({"id": seq, "branch_id": "other"}), ["branch_id"], None, None, None,
                  "postgres")  # fmt: skip


def test_the_hub_ends_the_subscriber_whose_view_fails_and_moves_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def view_fails(flt: StreamFilter, change: Change, data: bytes) -> bytes:
        raise RuntimeError("this subscriber's view cannot be encoded")

    monkeypatch.setattr(hub, "_view_bytes", view_fails)  # the subscriber-side step only
    info = TableInfo("public", "t", {"id": "number", "branch_id": "text"}, ("id",))
    catalog = {info.qualified: info}
    plain = build_filter(catalog, tables="t", ops=None, topics=None, columns=[])
    pinned = build_filter(catalog, tables="t", ops=None, topics=None, columns=[], branch="b1")

    async def run() -> None:
        h = hub.Hub()
        h.start_at(0)
        ok, bad = h.subscribe(plain), h.subscribe(pinned)
        h.publish([_change(1, "b1"), _change(2, "b1")])
        assert h.last_seq == 2 and h.failed == 1 and h.subscribers == {ok}
        assert bad.failure is not None and bad.failure.code == "encode_failed"
        assert bad.failure.seq == 1 and bad.closed
        assert [c.seqs for c in await ok.next_chunks(1)] == [(1, 2)]
        h.publish([_change(3, "b1")])
        assert h.last_seq == 3 and [c.seqs for c in await ok.next_chunks(1)] == [(3,)]

    asyncio.run(run())
