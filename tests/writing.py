"""Helpers for the write API tests: one database and one server per test module, and a
client that creates the rows other rows refer to.

A module shares its server (starting one costs about a second); each test makes
its own branch and rows with fresh ids, so tests do not see each other's data.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
from psycopg import sql

from cdc import db
from tests.conftest import drop_database, with_dbname
from tests.live import Server

DOMAIN_TABLES = (
    "branches", "clients", "appointments", "products", "orders", "distributors", "stock_requests",
)  # fmt: skip


@contextlib.contextmanager
def module_server(server_url: str, template_db: str) -> Iterator[tuple[Server, str]]:
    """A fresh clone of the migrated template and a `pgtide serve` on it."""
    name = f"pgtide_w_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}")
        conn.execute(create.format(sql.Identifier(name), sql.Identifier(template_db)))
    url = with_dbname(server_url, name)
    srv = Server(url).start()
    try:
        yield srv, url
    finally:
        srv.stop()
        drop_database(server_url, name)


def new_id() -> str:
    return str(uuid.uuid4())


class Api:
    """An httpx client on a live server, with the SQL connection to check what it did."""

    def __init__(self, server: Server, url: str) -> None:
        self.http = httpx.Client(base_url=server.base, timeout=30)
        self.base = server.base
        self.sql = db.connect(url)

    def close(self) -> None:
        self.http.close()
        self.sql.close()

    def post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return self.http.post(path, json=body, headers=headers)

    def created(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one row and return it (asserting 201)."""
        r = self.post(f"/api/{resource}", body)
        assert r.status_code == 201, r.text
        row: dict[str, Any] = r.json()["data"]
        return row

    def branch(self) -> dict[str, Any]:
        code = "B" + uuid.uuid4().hex[:12]
        return self.created("branches", {"code": code, "name": f"Branch {code}"})

    def client(self, branch_id: str) -> dict[str, Any]:
        return self.created("clients", {"branch_id": branch_id, "full_name": "Ann Example"})

    def product(self, branch_id: str, sku: str = "SKU-1") -> dict[str, Any]:
        body = {"branch_id": branch_id, "sku": sku, "name": "Aspirin", "price": "4.20"}
        return self.created("products", body)

    def distributor(self, branch_id: str) -> dict[str, Any]:
        return self.created("distributors", {"branch_id": branch_id, "name": "Pharma Ltd"})

    def scalar(self, query: str, *params: Any) -> Any:
        row = self.sql.execute(query.encode(), params).fetchone()  # type: ignore[call-overload]
        assert row is not None
        return row[0]

    def log(self, pk: str) -> list[tuple[Any, ...]]:
        """(op, actor, origin, mutation_id, txid) of a row's changes, in log order."""
        return self.sql.execute(
            "SELECT op, actor, origin, mutation_id, txid::text FROM pgtide.sync_log"
            " WHERE pk ->> 'id' = %s ORDER BY id",
            (pk,),
        ).fetchall()

    def checksum(self) -> tuple[Any, ...]:
        """Every domain table's content, and the size of pgtide.sync_log: equal means unchanged."""
        query = "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {} t"
        parts = [self.scalar(query.format(t)) for t in DOMAIN_TABLES]
        return (*parts, self.scalar("SELECT count(*) FROM pgtide.sync_log"))
