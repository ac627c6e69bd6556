"""The hub's equality index only prunes: every filter gets exactly what checking it
against every change gives, on random filters and changes. No database."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from cdc.filters import StreamFilter, TableInfo, build_filter, table_key
from cdc.hub import Encoded, _select, route
from cdc.reader import Change

ORDERS = TableInfo("public", "orders", {"id": "number", "total": "number", "status": "text",
                                        "branch_id": "uuid"}, ("id",))  # fmt: skip
NOTES = TableInfo("public", "notes", {"id": "number", "status": "text"}, ("id",))
CATALOG = {ORDERS.qualified: ORDERS, NOTES.qualified: NOTES}
B = ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"]
NUMBERS = ["1", "1.0", "1.50", "2", "NaN", "-0", "1e2", "100"]
STATUSES = ["new", "paid", "Paid", "x,y"]


def image(rng: random.Random, table: str) -> str:
    row: dict[str, Any] = {"id": rng.randint(1, 5), "status": rng.choice([*STATUSES, None])}
    if table == "orders":
        row["total"] = rng.choice([1, 2, 100, -0.0, 1.5, "NaN", None])
        row["branch_id"] = rng.choice([*B, B[0].upper(), None])
    # Numbers as PostgreSQL would print some of them (1.50, 1.0) to test exact keys.
    return json.dumps(row).replace("1.5,", "1.50,").replace("-0.0", "-0")


def change(rng: random.Random, seq: int) -> Change:
    table = rng.choice(["orders", "notes"])
    op = rng.choice(["INSERT", "UPDATE", "DELETE", "UPDATE", "TRUNCATE"])
    new = image(rng, table) if op in ("INSERT", "UPDATE") else None
    old = image(rng, table) if op in ("UPDATE", "DELETE") else None
    pk = None if op == "TRUNCATE" else '{"id": 1}'
    return Change(seq, seq, "1", datetime(2026, 1, 1, tzinfo=UTC), "public", table, op, pk,
                  new, old, None, None, None, None, "app")  # fmt: skip


def a_filter(rng: random.Random) -> StreamFilter:
    columns: list[tuple[str, str]] = []
    for _ in range(rng.randint(0, 2)):
        column = rng.choice(["total", "status", "branch_id", "id"])
        op = rng.choice(["eq", "eq", "eq", "neq", "in", "is", "gte"])
        if op == "is":
            columns.append((column, "is.null"))
            continue
        value = {"total": rng.choice(NUMBERS), "id": rng.choice(["1", "2", "3.0"]),
                 "status": rng.choice(STATUSES), "branch_id": rng.choice(B)}[column]  # fmt: skip
        if op == "in":
            value = f'("{value}",{rng.choice(STATUSES) if column == "status" else value})'
        if op == "gte" and column in ("status", "branch_id"):
            op = "eq"
        columns.append((column, f"{op}.{value}"))
    tables = rng.choice([None, "orders", "notes", "orders,notes"])
    if tables != "orders" and any(c in ("total", "branch_id") for c, _ in columns):
        tables = "orders"
    return build_filter(CATALOG, tables=tables, ops=rng.choice([None, "insert,update"]),
                        topics=None, columns=columns)  # fmt: skip


def test_routing_equals_checking_every_change() -> None:
    rng = random.Random(7)
    for _ in range(200):
        filters = {f.key: f for f in (a_filter(rng) for _ in range(rng.randint(1, 30)))}
        changes = [change(rng, s) for s in range(1, rng.randint(2, 40))]
        encoded: list[Encoded] = [(c, table_key(c), str(c.seq).encode()) for c in changes]
        routed = route(filters, encoded)
        for key, flt in filters.items():
            assert _select(flt, routed[key]) == _select(flt, encoded), flt.columns


def moved(s: int) -> Change:
    """Row `s + 500` renumbered `s`."""
    return Change(s, s, "1", datetime(2026, 1, 1, tzinfo=UTC), "public", "orders", "UPDATE",
                  f'{{"id": {s}}}', f'{{"id": {s}}}', f'{{"id": {s + 500}}}', ["id"], None, None,
                  None, "app")  # fmt: skip


def test_a_thousand_equality_filters_meet_only_their_changes() -> None:
    by_id = [
        build_filter(CATALOG, tables="orders", ops=None, topics=None, columns=[("id", f"eq.{i}")])
        for i in range(1000)
    ]
    filters = {f.key: f for f in by_id}
    encoded: list[Encoded] = [(c, table_key(c), b"") for c in map(moved, range(1, 11))]
    routed = route(filters, encoded)
    shown = {flt.columns[0].raw: [c.seq for c, _, _ in routed[k]] for k, flt in filters.items()}
    assert sum(len(v) for v in shown.values()) == 20  # each change: its new id and its old id
    assert shown["3"] == [3] and shown["503"] == [3] and shown["42"] == []
