"""The write-transaction runner (api/transactions.py) against a real PostgreSQL.

A serialisation failure is made for real: the attempt reads in REPEATABLE READ,
another connection changes the row and commits, then the attempt writes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from api import transactions
from api.errors import ApiError
from cdc import db

Conn = psycopg.AsyncConnection[Any]

SETUP = (
    "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL); INSERT INTO counters VALUES (1, 0)"
)


class Connections:
    """A connection source that opens a new connection per attempt and counts them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened = 0

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[Conn]:
        self.opened += 1
        async with await db.aconnect(self.url) as conn:
            yield conn


def contended(url: str, times: int) -> Callable[[Conn], Awaitable[int]]:
    """Work whose first `times` attempts lose a concurrent update (serialisation failure)."""
    lost = 0

    async def work(conn: Conn) -> int:
        nonlocal lost
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        await conn.execute("SELECT n FROM counters WHERE id = 1")  # the snapshot is taken here
        if lost < times:
            lost += 1
            async with await db.aconnect(url) as other:
                await other.execute("UPDATE counters SET n = n + 1 WHERE id = 1")
        cur = await conn.execute("UPDATE counters SET n = n + 10 WHERE id = 1 RETURNING n")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    return work


def counter(url: str) -> int:
    with db.connect(url) as conn:
        row = conn.execute("SELECT n FROM counters WHERE id = 1").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def url(db_url: str) -> str:
    with db.connect(db_url) as conn:
        conn.execute(SETUP)
    return db_url


def test_a_serialisation_failure_is_run_again_on_a_new_connection(url: str) -> None:
    connect = Connections(url)
    assert asyncio.run(transactions.run(connect, contended(url, 2))) == 12
    assert connect.opened == 3 and counter(url) == 12


def test_the_last_serialisation_failure_is_a_503_and_writes_nothing(url: str) -> None:
    connect = Connections(url)
    with pytest.raises(ApiError) as raised:
        asyncio.run(transactions.run(connect, contended(url, 3)))
    assert raised.value.status == 503 and raised.value.headers == {"Retry-After": "1"}
    assert isinstance(raised.value.__cause__, psycopg.errors.SerializationFailure)
    assert connect.opened == transactions.ATTEMPTS and counter(url) == 3  # the others' updates


def test_a_refusal_goes_to_refused_and_a_declined_result_rolls_back(url: str) -> None:
    async def duplicate(conn: Conn) -> str:
        await conn.execute("UPDATE counters SET n = 5 WHERE id = 1")
        await conn.execute("INSERT INTO counters VALUES (1, 0)")
        return "written"

    async def declined(conn: Conn) -> str:
        await conn.execute("UPDATE counters SET n = 7 WHERE id = 1")
        return "conflict"

    async def go() -> tuple[str, str]:
        connect = Connections(url)
        refused = await transactions.run(
            connect, duplicate, refused=lambda error: f"refused {error.status}"
        )
        kept = await transactions.run(connect, declined, commit=lambda r: r == "written")
        return refused, kept

    assert asyncio.run(go()) == ("refused 409", "conflict")
    assert counter(url) == 0  # neither the refused nor the declined transaction wrote


def test_a_refusal_without_refused_is_raised_and_a_bug_is_raised_as_it_is(url: str) -> None:
    async def null(conn: Conn) -> None:
        await conn.execute("UPDATE counters SET n = NULL WHERE id = 1")

    async def typo(conn: Conn) -> None:
        await conn.execute("SELEC 1")

    with pytest.raises(ApiError) as raised:
        asyncio.run(transactions.run(Connections(url), null))
    assert raised.value.status == 422 and raised.value.members["errors"][0]["field"] == "n"
    with pytest.raises(psycopg.errors.SyntaxError):
        asyncio.run(transactions.run(Connections(url), typo, refused=lambda error: None))
