"""A replica built by applying changes in order, checking each one as it goes.

Every UPDATE and DELETE must find, in the replica, exactly the old row image it
carries: a change applied out of order fails here, not only at the end.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

Row = dict[str, Any]


def key_of(row: Row, pk_columns: list[str]) -> str:
    """A stable key for a row from its primary key columns."""
    return json.dumps([row[c] for c in pk_columns])


class Replica:
    """Tables rebuilt from change events (`pgtide.sync_log` rows or stream events)."""

    def __init__(self, pk_columns: dict[str, list[str]]) -> None:
        self.pk_columns = pk_columns
        self.tables: dict[str, dict[str, Row]] = {t: {} for t in pk_columns}

    def apply(self, table: str, op: str, new: Row | None, old: Row | None) -> None:
        """Apply one change; raise AssertionError if it does not fit the replica's state."""
        if table not in self.pk_columns:
            return
        rows = self.tables[table]
        cols = self.pk_columns[table]
        if op == "TRUNCATE":
            rows.clear()
        elif op == "INSERT":
            assert new is not None
            k = key_of(new, cols)
            assert k not in rows, f"{table}: INSERT of existing key {k}"
            rows[k] = new
        elif op == "UPDATE":
            assert new is not None and old is not None
            k_old = key_of(old, cols)
            assert rows.get(k_old) == old, f"{table}: UPDATE out of order at {k_old}"
            del rows[k_old]
            rows[key_of(new, cols)] = new
        elif op == "DELETE":
            assert old is not None
            k = key_of(old, cols)
            assert rows.get(k) == old, f"{table}: DELETE out of order at {k}"
            del rows[k]
        else:
            raise AssertionError(f"unexpected op {op}")


def tracked_pk_columns(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, list[str]]:
    """Primary key columns of the given tracked tables (from pgtide.sync_tracked)."""
    rows = conn.execute(
        "SELECT table_name, pk_columns FROM pgtide.sync_tracked WHERE table_name = ANY(%s)",
        (tables,),
    ).fetchall()
    return {r[0]: list(r[1]) for r in rows}


def table_contents(conn: psycopg.Connection[Any], table: str, cols: list[str]) -> dict[str, Row]:
    """The current rows of `table` as jsonb images keyed like the replica."""
    rows = conn.execute(
        sql.SQL("SELECT to_jsonb(t) FROM {} AS t").format(sql.Identifier(table))
    ).fetchall()
    return {key_of(r[0], cols): r[0] for r in rows}
