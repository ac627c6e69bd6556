"""`GET /api/<r>`: column filters, `search=`, `order=` and keyset pagination, as SQL.

Filters use the stream's syntax (cdc/filters.py parses them): `branch_id=eq.…`,
`status=in.(new,paid)`, `neq lt lte gt gte`, `is.null|true|false`. Values are
read as the column's kind and bound; identifiers come from the catalog and the
resource's whitelist only. Pages follow a total order (the requested columns,
then the key); the opaque `after` cursor holds the last row's key in that order.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

from psycopg import sql
from starlette.datastructures import QueryParams

from api.models import Resource
from cdc.errors import FilterError
from cdc.filters import TableInfo, parse_column_filter, split_in_list
from cdc.values import BOOL, JSON, cast_of, to_param

RESERVED = frozenset({"search", "order", "limit", "after"})
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
MAX_ORDER_KEYS = 3
_COMPARE: dict[str, LiteralString] = {
    "eq": "{} = {}", "neq": "{} <> {}", "lt": "{} < {}", "lte": "{} <= {}", "gt": "{} > {}",
    "gte": "{} >= {}",
}  # fmt: skip
_IS: dict[str, LiteralString] = {"null": "{} IS NULL", "true": "{} IS TRUE", "false": "{} IS FALSE"}
Order = tuple[tuple[str, bool], ...]  # (column, descending), ending with id


@dataclass(frozen=True)
class Listing:
    """A checked list request: WHERE with its parameters, the order, the page size."""

    where: sql.Composable
    params: dict[str, Any]
    order: Order
    limit: int

    def query(self, template: LiteralString, table: sql.Composable) -> sql.Composed:
        """The page query: the rows' images, then their key values, one more than a page."""
        return sql.SQL(template).format(
            table=table,
            # As JSON text: the same ISO form whatever DateStyle says, and values Python
            # cannot load (timestamps at infinity, years past 9999) still make a cursor.
            keys=sql.SQL(", ").join(
                sql.SQL("to_jsonb({}) #>> '{{}}'").format(sql.Identifier("t", c))
                for c, _ in self.order
            ),
            where=self.where,
            order=sql.SQL(", ").join(
                sql.SQL("{} DESC" if d else "{} ASC").format(sql.Identifier("t", c))
                for c, d in self.order
            ),
        )


def plan(res: Resource, table: TableInfo, params: QueryParams, branch: Any) -> Listing:
    """Check a list request against the resource and its table; FilterError (400) if bad.

    `branch` confines the rows to one branch (a pinned token's), whatever the filters say.
    """
    if any("\x00" in k or "\x00" in v for k, v in params.multi_items()):
        raise FilterError("query parameters must not contain NUL characters")
    conds: list[sql.Composable] = []
    values: dict[str, Any] = {}
    if branch is not None and res.tenant is not None:
        conds.append(sql.SQL("{} = %(branch)s").format(sql.Identifier("t", res.tenant)))
        values["branch"] = branch
    for n, (column, raw) in enumerate((k, v) for k, v in params.multi_items() if k not in RESERVED):
        if column not in table.columns:
            raise FilterError(f"filter on unknown column {column!r}: {res.name} has no such column")
        cond, value = _condition(column, raw, table.columns[column], f"f{n}")
        conds.append(cond)
        if value is not None:
            values[f"f{n}"] = value
    search = params.get("search")
    if search and not res.search_columns:
        raise FilterError(f"{res.name} has no text columns to search")
    if search:
        values["search"] = "%" + _escape_like(_text(search, "search")) + "%"
        conds.append(sql.SQL("({})").format(sql.SQL(" OR ").join(
            sql.SQL("{} ILIKE %(search)s").format(sql.Identifier("t", c))
            for c in res.search_columns
        )))  # fmt: skip
    order = _order(res, params.get("order"))
    limit = _limit(params.get("limit"))
    after = params.get("after")
    if after is not None:
        cond, keys = _after(order, table, after)
        conds.append(cond)
        values.update(keys)
    where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("TRUE")
    return Listing(where, {**values, "limit": limit + 1}, order, limit)


def _condition(column: str, raw: str, kind: str, name: str) -> tuple[sql.Composable, Any]:
    flt = parse_column_filter(column, raw)
    col = sql.Identifier("t", column)
    where = f"filter {column}={raw}"
    if flt.op == "is":
        target = flt.raw.lower()
        if target not in _IS or (target != "null" and kind != BOOL):
            allowed = "null, true or false" if kind == BOOL else "null"
            raise FilterError(f"{where}: is. takes {allowed} on this column")
        return sql.SQL(_IS[target]).format(col), None
    if kind == JSON:
        raise FilterError(f"{where}: column {column} holds json; only is.null is supported")
    if kind == BOOL and flt.op not in ("eq", "neq", "in"):
        raise FilterError(f"{where}: {flt.op} does not apply to a boolean column")
    ph: sql.Composable = sql.Placeholder(name)
    cast = cast_of(kind)
    if flt.op == "in":
        items = [_value(kind, v, where) for v in split_in_list(flt.raw)]
        if cast is not None:
            ph = sql.SQL("{}::{}").format(ph, sql.SQL(cast + "[]"))
        return sql.SQL("{} = ANY ({})").format(col, ph), items
    value = _value(kind, flt.raw, where)
    if cast is not None:
        ph = sql.SQL("{}::{}").format(ph, sql.SQL(cast))
    return sql.SQL(_COMPARE[flt.op]).format(col, ph), value


def _text(value: str, what: str) -> str:
    if "\x00" in value:
        raise FilterError(f"{what} must not contain NUL characters")
    return value


def _value(kind: str, text: str, where: str) -> Any:
    """A filter or cursor value read as the column's kind (cdc/values.py), to bind."""
    try:
        return to_param(kind, text)
    except ValueError:
        raise FilterError(f"{where}: {text!r} is not a valid {kind} value") from None


def _escape_like(text: str) -> str:
    """Match `text` literally in LIKE: backslash is ILIKE's default escape character."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _order(res: Resource, value: str | None) -> Order:
    """`order=name.desc,created_at` → ((name, True), (created_at, False), (id, False))."""
    keys: list[tuple[str, bool]] = []
    for item in value.split(",") if value else []:
        column, _, direction = item.strip().partition(".")
        if column not in res.order_columns:
            allowed = ", ".join(sorted(res.order_columns))
            raise FilterError(f"cannot order {res.name} by {column!r}; use one of {allowed}")
        if direction not in ("", "asc", "desc"):
            raise FilterError(f"order direction must be asc or desc, got {direction!r}")
        if any(column == c for c, _ in keys):
            raise FilterError(f"order names {column!r} twice")
        keys.append((column, direction == "desc"))
    if len(keys) > MAX_ORDER_KEYS:
        raise FilterError(f"order takes at most {MAX_ORDER_KEYS} columns")
    if not any(c == res.key for c, _ in keys):
        keys.append((res.key, False))  # a unique last key makes the order total
    return tuple(keys)


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    # isascii: '²'.isdigit() is true, yet int('²') fails.
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
        raise FilterError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {value!r}")
    return int(value)


def _spec(order: Order) -> str:
    """The order as `col.asc,…`: a cursor is valid only for the order it was made in."""
    return ",".join(f"{c}.{'desc' if d else 'asc'}" for c, d in order)


def cursor(order: Order, keys: tuple[Any, ...]) -> str:
    """The opaque cursor after a row whose order keys are `keys`."""
    texts = [k.isoformat() if isinstance(k, datetime) else str(k) for k in keys]
    payload = json.dumps({"o": _spec(order), "k": texts}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _after(order: Order, table: TableInfo, token: str) -> tuple[sql.Composable, dict[str, Any]]:
    """The keyset condition `(order keys) after cursor`, expanded for mixed directions."""
    try:
        padded = token + "=" * (-len(token) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        spec, texts = decoded["o"], decoded["k"]
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeError):
        raise FilterError("after is not a cursor this API made; use the `next` link") from None
    if spec != _spec(order) or not isinstance(texts, list):
        raise FilterError("after belongs to another order; keep `order` as it was")
    if len(texts) != len(order) or not all(isinstance(t, str) for t in texts):
        raise FilterError("after is not a cursor this API made; use the `next` link")
    params = {
        f"k{i}": _value(table.columns[c], t, "after")
        for i, ((c, _), t) in enumerate(zip(order, texts, strict=True))
    }
    # (a, b) after (x, y): a beyond x, or a = x and b beyond y, and so on.
    alternatives = []
    for i, (column, desc) in enumerate(order):
        parts = [sql.SQL("{} = {}").format(sql.Identifier("t", c), sql.Placeholder(f"k{j}"))
                 for j, (c, _) in enumerate(order[:i])]  # fmt: skip
        beyond = sql.SQL("{} < {}" if desc else "{} > {}")
        parts.append(beyond.format(sql.Identifier("t", column), sql.Placeholder(f"k{i}")))
        alternatives.append(sql.SQL("({})").format(sql.SQL(" AND ").join(parts)))
    return sql.SQL("({})").format(sql.SQL(" OR ").join(alternatives)), params
