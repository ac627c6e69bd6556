"""`tables=` names `schema.table`; a bare name resolves only when one schema tracks it.

A table of one's own in another schema named like the shipped app's (`sales.orders`
beside `public.orders`) must be selectable on its own, and a bare `orders` must be
refused with 400 rather than silently mean one of them. Branch pins use the tenant
column the serving app declares.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cdc import db
from tests.live import Server, Stream, problem_of


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(db_url) as conn:
        conn.execute(
            b"CREATE SCHEMA sales;"
            b" CREATE TABLE sales.orders (id int PRIMARY KEY, region text, total numeric);"
            b" CREATE TABLE sales.ledger (id int PRIMARY KEY, note text);"
            b" SELECT pgtide.track_v1('sales.orders'), pgtide.track_v1('sales.ledger');"
        )
        yield conn


@pytest.fixture
def server(db_url: str, sql: psycopg.Connection[Any]) -> Iterator[Server]:
    srv = Server(db_url).start()
    yield srv
    srv.stop()


def public_order(sql: psycopg.Connection[Any]) -> None:
    branch = sql.execute(
        "INSERT INTO branches (code, name) VALUES ('S1', 'S1') RETURNING id"
    ).fetchone()
    client = sql.execute(
        "INSERT INTO clients (branch_id, full_name) VALUES (%s, 'Ann') RETURNING id",
        (branch[0] if branch else None,),
    ).fetchone()
    assert branch is not None and client is not None
    sql.execute("INSERT INTO orders (branch_id, client_id) VALUES (%s, %s)",
                (branch[0], client[0]))  # fmt: skip


def test_a_name_tracked_in_two_schemas_must_be_qualified(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    refused = Stream(server.base, "/events?tables=orders")
    assert refused.status == 400
    refused.close()
    detail = problem_of_stream(server, "/events?tables=orders")
    assert "ambiguous" in detail and "public.orders" in detail and "sales.orders" in detail

    mine = Stream(server.base, "/events?tables=sales.orders&total=gte.10")
    theirs = Stream(server.base, "/events?tables=public.orders")
    bare = Stream(server.base, "/events?tables=ledger")  # tracked in one schema only
    try:
        for s in (mine, theirs, bare):
            s.until("synced")
        public_order(sql)
        sql.execute("INSERT INTO sales.orders VALUES (1, 'eu', 5), (2, 'us', 50)")
        sql.execute("INSERT INTO sales.ledger VALUES (1, 'x')")
        got = mine.changes(1)
        assert [(c["schema"], c["table"], c["pk"]) for c in got] == [
            ("sales", "orders", {"id": 2})]  # fmt: skip
        other = theirs.changes(1)
        assert [(c["schema"], c["table"]) for c in other] == [("public", "orders")]
        assert [(c["schema"], c["table"]) for c in bare.changes(1)] == [("sales", "ledger")]
    finally:
        for s in (mine, theirs, bare):
            s.close()


def test_an_unknown_qualified_table_is_a_400(server: Server) -> None:
    for name in ("nowhere.orders", "sales.nothing", "pgtide.sync_log"):
        assert "unknown table" in problem_of_stream(server, f"/events?tables={name}")


def problem_of_stream(server: Server, path: str) -> str:
    import httpx

    response = httpx.get(server.base + path, timeout=30)
    assert response.status_code == 400, response.text
    return str(problem_of(response)["detail"])
