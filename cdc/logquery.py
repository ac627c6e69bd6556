"""The sync-log query: request parameters checked into a `LogQuery`, and row keys. Pure.

Shared by `GET /api/sync-log` and `pgtide audit` (docs/audit.md): the same
names, the same checks, the same messages. A bad parameter raises FilterError
or CursorError, which the HTTP layer turns into a 400.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from cdc.cursor import parse_cursor
from cdc.errors import FilterError
from cdc.timespec import parse_instant
from cdc.values import NUMBER, UUID, parse_number

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
OPS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "MESSAGE")
PARAMS = ("table", "op", "pk", "actor", "origin", "txid", "from", "to", "after", "limit", "order")
_XID8_MAX = 2**64 - 1


@dataclass(frozen=True)
class LogQuery:
    """A checked sync-log query. `pk` is kept as written until the table's key is known."""

    tables: tuple[str, ...] | None = None
    ops: tuple[str, ...] | None = None
    pk: str | None = None
    actor: str | None = None
    origin: str | None = None
    txid: int | None = None
    start: datetime | None = None  # `from`, inclusive
    end: datetime | None = None  # `to`, exclusive
    after: int | None = None
    limit: int = DEFAULT_LIMIT
    descending: bool = False

    def to_params(self) -> dict[str, str]:
        """The query as request parameters (for `next` links); inverse of `parse_query`."""
        out: dict[str, str] = {}
        if self.tables:
            out["table"] = ",".join(self.tables)
        if self.ops:
            out["op"] = ",".join(o.lower() for o in self.ops)
        for name in ("pk", "actor", "origin"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.txid is not None:
            out["txid"] = str(self.txid)
        if self.start is not None:
            out["from"] = self.start.isoformat()
        if self.end is not None:
            out["to"] = self.end.isoformat()
        if self.after is not None:
            out["after"] = str(self.after)
        out["limit"] = str(self.limit)
        out["order"] = "desc" if self.descending else "asc"
        return out


def _names(value: str, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(","))
    if any(not v for v in items):
        raise FilterError(f"{what} must be a comma-separated list, got {value!r}")
    return items


def _one(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for name, value in items:
        if name not in PARAMS:
            raise FilterError(f"unknown parameter {name!r}: use {', '.join(PARAMS)}")
        if name in seen:
            raise FilterError(f"parameter {name!r} is given twice")
        if "\x00" in value:  # PostgreSQL text cannot hold NUL: refuse it here, not with a 500
            raise FilterError(f"parameter {name!r} must not contain NUL characters")
        seen[name] = value
    return seen


def parse_query(items: Iterable[tuple[str, str]]) -> LogQuery:
    """Check request parameters (name, value pairs); raise FilterError/CursorError."""
    p = _one(items)
    ops = None
    if "op" in p:
        ops = tuple(o.upper() for o in _names(p["op"], "op"))
        for o in ops:
            if o not in OPS:
                raise FilterError(f"unknown op {o.lower()!r}: use {', '.join(OPS).lower()}")
    for name in ("actor", "origin", "pk"):
        if name in p and p[name] == "":
            raise FilterError(f"{name} must not be empty")
    tables = _names(p["table"], "table") if "table" in p else None
    if "pk" in p and (tables is None or len(tables) != 1):
        raise FilterError("pk needs exactly one table (table=<name>)")
    txid = _number(p, "txid", _XID8_MAX, "a transaction id")
    start, end = _instant(p, "from"), _instant(p, "to")
    limit = _number(p, "limit", MAX_LIMIT, f"a number from 1 to {MAX_LIMIT}")
    if limit is not None and limit < 1:
        raise FilterError(f"limit must be from 1 to {MAX_LIMIT}, got {limit}")
    order = p.get("order", "asc").lower()
    if order not in ("asc", "desc"):
        raise FilterError(f"order must be asc or desc, got {p['order']!r}")
    return LogQuery(
        tables=tables,
        ops=ops,
        pk=p.get("pk"),
        actor=p.get("actor"),
        origin=p.get("origin"),
        txid=txid,
        start=start,
        end=end,
        after=parse_cursor(p["after"]) if "after" in p else None,
        limit=DEFAULT_LIMIT if limit is None else limit,
        descending=order == "desc",
    )


def _number(p: Mapping[str, str], name: str, maximum: int, what: str) -> int | None:
    if name not in p:
        return None
    text = p[name]
    if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) > maximum:
        raise FilterError(f"{name} must be {what}, got {text!r}")
    return int(text)


def _instant(p: Mapping[str, str], name: str) -> datetime | None:
    if name not in p:
        return None
    try:
        return parse_instant(p[name])
    except ValueError as exc:
        raise FilterError(f"{name}: {exc}") from None


@dataclass(frozen=True)
class Key:
    """A tracked table's key: (column, kind) in key order."""

    table: str
    columns: tuple[tuple[str, str], ...] = field(default_factory=tuple)


class _NotNumber(ValueError):
    pass


def _key_number(text: str) -> int | float:
    """A JSON number of a key, as PostgreSQL's numeric reads it, kept exact for jsonb.

    An integer stays an int (1e999 included, up to what Python prints); a fraction
    becomes a float only when that float prints as the same number.
    """
    try:
        is_nan, value = parse_number(text)
    except ValueError:
        raise _NotNumber(text) from None
    if isinstance(value, int):
        return value
    if is_nan or not value.is_finite():
        raise _NotNumber(text)
    if value == value.to_integral_value():
        if value.adjusted() >= sys.get_int_max_str_digits() > 0:
            raise _NotNumber(text)
        return int(value)
    fraction = float(value)
    if Decimal(repr(fraction)) != value:
        raise _NotNumber(text)
    return fraction


def _no_constant(name: str) -> Any:
    raise _NotNumber(name)  # NaN, Infinity: not JSON, and never a key


def _loads(text: str) -> Any:
    """JSON with numbers checked by `_key_number`; ValueError if not valid."""
    return json.loads(
        text, parse_int=_key_number, parse_float=_key_number, parse_constant=_no_constant
    )


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _json_value(kind: str, text: str, where: str) -> Any:
    if kind == UUID:
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise FilterError(f"{where}: {text!r} is not a uuid") from None
    if kind == NUMBER:
        try:
            value = _loads(text)
        except ValueError:
            value = None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise FilterError(f"{where}: {text!r} is not a number")
        return value
    return text


def _key_value(kind: str | None, value: Any, where: str) -> Any:
    """A JSON key value checked against its column's kind (uuid made canonical)."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind == UUID:
        if not isinstance(value, str):
            raise FilterError(f"{where}: a uuid column's value must be a string")
        return _json_value(UUID, value, where)
    if kind == NUMBER and not is_number:
        raise FilterError(f"{where}: a number column's value must be a JSON number")
    return value


def row_key(key: Key | None, table: str, raw: str) -> dict[str, Any]:
    """A row's key as logged (`sync_log.pk`) from `raw`: a JSON object, or a bare id.

    A bare id needs a tracked table with a one-column key; it is typed by that
    column (a number, a uuid in canonical form, else a string). In a JSON object,
    uuid values are put in canonical form too.
    """
    where = f"pk {raw!r} of {table}"
    if raw.lstrip().startswith("{"):
        try:
            value = _loads(raw)
        except _NotNumber as exc:
            raise FilterError(f"{where}: {exc} is not a number a key can hold") from None
        except ValueError:
            raise FilterError(f"{where}: not valid JSON") from None
        if not isinstance(value, dict) or not value:
            raise FilterError(f"{where}: the key must be a non-empty JSON object")
        if _has_nul(value):  # jsonb cannot hold \u0000
            raise FilterError(f"{where}: the key must not contain NUL characters")
        kinds = dict(key.columns) if key else {}
        return {k: _key_value(kinds.get(k), v, f"{where}: {k}") for k, v in value.items()}
    if key is None:
        raise FilterError(
            f"{where}: {table} is not tracked, so its key columns are unknown; "
            'give the key as a JSON object, e.g. {"id": 1}'
        )
    if len(key.columns) != 1:
        cols = ", ".join(c for c, _ in key.columns)
        raise FilterError(f"{where}: {table}'s key has columns {cols}: give a JSON object")
    column, kind = key.columns[0]
    return {column: _json_value(kind, raw, where)}
