"""The log reader: committed changes after a cursor, in `seq` order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import RowMaker, class_row

from cdc.cursor import Cursor
from cdc.queries import queries
from cdc.values import exact_loads


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__,
# 3.9 µs per change against 0.5 µs (catch-up builds one per row). Never mutated after
# it is made, except the decode cache; views make new ones (dataclasses.replace).
@dataclass(slots=True)
class Change:
    """One sequenced change: a `pgtide.sync_log` row with its `seq`.

    The row images (`pk`, `row`, `old`) are kept as PostgreSQL prints the jsonb
    (docs/decisions.md, "Row images as PostgreSQL prints them"): an event is framed
    from that text, and `pk`, `new_row`, `old_row` decode it on first use only, for
    the filters and the audit that read values.
    """

    seq: int
    id: int
    txid: str
    at: datetime
    schema_name: str
    table_name: str
    op: str
    pk_json: str | None
    row_json: str | None
    old_json: str | None
    changed: list[str] | None
    actor: str | None
    origin: str | None
    mutation_id: str | None
    db_role: str
    # Set by a subscriber's view (cdc/filters.py), never read from the log: this UPDATE takes
    # the row out of the subscriber's column filters (the event's `"left": true`).
    left: bool = False
    _decoded: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def _image(self, name: str, text: str | None) -> Any:
        if text is None:
            return None
        decoded = self._decoded
        if decoded is None:
            decoded = {}
            self._decoded = decoded
        try:
            return decoded[name]
        except KeyError:
            value = decoded[name] = exact_loads(text)
            return value

    @property
    def pk(self) -> dict[str, Any] | None:
        """The row's key, decoded."""
        return self._image("pk", self.pk_json)  # type: ignore[no-any-return]

    @property
    def new_row(self) -> dict[str, Any] | None:
        """The new row image, decoded (None for DELETE and TRUNCATE)."""
        return self._image("row", self.row_json)  # type: ignore[no-any-return]

    @property
    def old_row(self) -> dict[str, Any] | None:
        """The old row image, decoded (None for INSERT and TRUNCATE)."""
        return self._image("old", self.old_json)  # type: ignore[no-any-return]


_FIELDS = tuple(f.name for f in fields(Change) if f.init and f.name != "left")


def change_row(cursor: Any) -> RowMaker[Change]:
    """Rows as `Change`, built positionally when the columns are Change's fields in order.

    The hot path of catch-up: class_row builds a dict and a keyword call per row
    (measured 12.8 us per row against 5.0 us positionally). Checked once per
    result; any other column order falls back to class_row.
    """
    desc = cursor.description
    if desc is None or tuple(c.name for c in desc) != _FIELDS:
        return class_row(Change)(cursor)

    def make(values: Sequence[Any]) -> Change:
        return Change(*values)

    return make


def read_after(conn: psycopg.Connection[Any], after: Cursor, limit: int = 1000) -> list[Change]:
    """The next at most `limit` changes with `seq > after`, in `seq` order."""
    with conn.cursor(row_factory=change_row) as cur:
        cur.execute(queries["read_after"], {"after": after, "limit": limit})
        return cur.fetchall()


async def aread_after(
    conn: psycopg.AsyncConnection[Any], after: Cursor, limit: int = 1000
) -> list[Change]:
    """Async twin of `read_after`."""
    async with conn.cursor(row_factory=change_row) as cur:
        await cur.execute(queries["read_after"], {"after": after, "limit": limit})
        return await cur.fetchall()


def head(conn: psycopg.Connection[Any]) -> Cursor:
    """The largest `seq` handed out so far (0 before the first)."""
    row = conn.execute(queries["head"]).fetchone()
    return Cursor(int(row[0]) if row else 0)
