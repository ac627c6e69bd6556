"""Tracking: attaching capture to tables and listing the tracked ones.

The work is done by the SQL functions `pgtide.track_v1` / `pgtide.untrack_v1`
(schema/triggers.sql), which raise clear errors of their own; this module binds
the table name as a value (the `::regclass` cast parses and checks it) and turns
the database's refusals into `TrackingError` with the database's own first line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors

from cdc.db import first_line
from cdc.errors import TrackingError
from cdc.queries import queries

# Refusals that concern the table the user named (not the database or the connection).
_REFUSALS: tuple[type[psycopg.Error], ...] = (
    errors.UndefinedTable,  # no such relation
    errors.InvalidSchemaName,  # no such schema in a qualified name
    errors.InvalidName,  # unparseable name, e.g. an unterminated quote
    errors.SyntaxError,  # too many dotted names
    errors.InvalidTableDefinition,  # no primary key
    errors.WrongObjectType,  # a view, a sequence, or one of pgtide's own tables
    errors.InsufficientPrivilege,  # a system catalog, or a table we may not alter
)

_NOT_MIGRATED = "pgtide is not installed in this database: run `pgtide migrate` first"


@dataclass(frozen=True)
class TrackedTable:
    """A tracked table and the number of changes logged for it."""

    schema: str
    table: str
    pk_columns: list[str]
    tracked_at: datetime
    changes: int


@contextmanager
def _refusals(verb: str, table: str) -> Iterator[None]:
    try:
        yield
    except errors.UndefinedFunction as exc:  # pgtide.track_v1 missing
        raise TrackingError(_NOT_MIGRATED) from exc
    except _REFUSALS as exc:
        message = first_line(exc)
        if message == 'schema "pgtide" does not exist':  # where track_v1 lives
            raise TrackingError(_NOT_MIGRATED) from exc
        # The SQL functions say "cannot track x: ..." themselves; the regclass cast does not.
        if not message.startswith("cannot "):
            message = f"cannot {verb} {table}: {message}"
        raise TrackingError(message) from exc


def track(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """Attach capture to `table` (a possibly schema-qualified name); idempotent.

    Returns the primary key's columns. Raises `TrackingError` if the table does
    not exist, is not a plain or partitioned table, or has no primary key.
    """
    with _refusals("track", table):
        row = conn.execute(queries["track"], {"table": table}).fetchone()
    assert row is not None  # a SELECT of one function call returns one row
    return list(row[0])


def untrack(conn: psycopg.Connection[Any], table: str) -> bool:
    """Detach capture from `table`; returns whether it was tracked.

    The changes already logged stay in `pgtide.sync_log`.
    """
    with _refusals("untrack", table):
        row = conn.execute(queries["untrack"], {"table": table}).fetchone()
    assert row is not None
    return bool(row[0])


def tracked_tables(conn: psycopg.Connection[Any]) -> list[TrackedTable]:
    """Every tracked table with its number of logged changes, by schema and name."""
    try:
        rows = conn.execute(queries["tracked_tables"]).fetchall()
    except errors.UndefinedTable as exc:  # pgtide.sync_tracked or pgtide.sync_log missing
        raise TrackingError(_NOT_MIGRATED) from exc
    return [
        TrackedTable(
            schema=r[0], table=r[1], pk_columns=list(r[2]), tracked_at=r[3], changes=int(r[4])
        )
        for r in rows
    ]
