"""The sequencer's statements read the log by its indexes whatever the statistics say.

A new deployment's log has never been analyzed, and a bulk load makes its statistics
lie: the leader's session settings (cdc/queries.sql, sequencer_session) must keep every
plan of the discovery, the batch and its seal to index lookups, with no parallel workers,
for custom plans and (PostgreSQL 16+) generic ones.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from cdc.queries import queries

STATEMENTS = ("discover", "sequence_batch", "read_after")


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += plan_nodes(child)
    return out


def params_for(name: str) -> dict[str, Any]:
    return {"next_xid": "1", "open_xids": ["5", "9"], "txids": ["700", "701"], "last_seq": 10,
            "after": 10, "limit": 1000}  # fmt: skip


def explain(conn: psycopg.Connection[Any], name: str, generic: bool) -> list[dict[str, Any]]:
    text = queries[name]
    if generic:
        # Positional parameters with their types left to the statement's own casts.
        names: list[str] = []
        text = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}"
                      if m.group(1) in names else (names.append(m.group(1)) or f"${len(names)}"),
                      text)  # fmt: skip
        row = conn.execute(f"EXPLAIN (GENERIC_PLAN, FORMAT JSON) {text}").fetchone()
    else:
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {text}", params_for(name)).fetchone()
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return plan_nodes(doc[0]["Plan"])


@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
def test_no_statement_of_the_sequencer_scans_the_log(
    conn: psycopg.Connection[Any], server_version: int, generic: bool
) -> None:
    if generic and server_version < 160000:
        pytest.skip("EXPLAIN (GENERIC_PLAN) needs PostgreSQL 16; custom plans are checked")
    conn.execute("CREATE TABLE bulk (id int PRIMARY KEY, v text)")
    conn.execute("SELECT pgtide.track_v1('bulk')")
    conn.execute("INSERT INTO bulk SELECT g, 'x' FROM generate_series(1, 20000) g")
    # Statistics that lie: none at all, as on a log no one has analyzed yet.
    conn.execute("DELETE FROM pg_statistic WHERE starelid = 'pgtide.sync_log'::regclass")
    conn.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = 'pgtide.sync_log'::regclass")
    conn.execute(queries["sequencer_session"])
    for name in STATEMENTS:
        nodes = explain(conn, name, generic)
        scans = [n for n in nodes if n["Node Type"] == "Seq Scan"
                 and n.get("Relation Name") in ("sync_log", "sync_order")]  # fmt: skip
        assert scans == [], (name, scans)
        assert not [n for n in nodes if n["Node Type"] in ("Gather", "Gather Merge")], name
        assert not [n for n in nodes if n["Node Type"] == "Hash Join"], name
