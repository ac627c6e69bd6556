"""Stream filters: `tables`, `ops`, `topics` and PostgREST-style column filters.

Pure: parsing and matching need only the catalog's column kinds, no database.

A column filter (`branch_id=eq.B1`, `status=in.(new,paid)`, `total=gte.10`,
`notes=is.null`) matches a change when the new row image or the old one
satisfies every filter, so a subscriber also sees a row leave its filter: that
UPDATE is sent with `"left": true` (`StreamFilter.view`), so that a replica drops
the row without evaluating filters of its own.
TRUNCATE events of a selected table always match (they affect every row);
MESSAGE events are selected by `topics` alone.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cdc import values
from cdc.errors import FilterError
from cdc.reader import Change

# Column kinds (cdc/values.py) decide how a filter value is read and compared.
from cdc.values import BOOL, CLOCK, JSON, NUMBER, TEXT, TIME, UUID

ROW_OPS = frozenset({"INSERT", "UPDATE", "DELETE", "TRUNCATE"})
OPERATORS = frozenset({"eq", "neq", "lt", "lte", "gt", "gte", "in", "is"})
ORDERED = frozenset({"lt", "lte", "gt", "gte"})

TENANT = "branch_id"  # the tenant column of tables no app declares another for

Image = Mapping[str, Any]
Predicate = Callable[[Image], bool]


@dataclass(frozen=True)
class TableInfo:
    """A tracked table's name and its columns' kinds."""

    schema: str
    name: str
    columns: Mapping[str, str]
    pk: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        """`schema.table`: how the catalog and the filters key a table."""
        return f"{self.schema}.{self.name}"


def table_key(change: Change) -> str:
    """What filters select a change by: `schema.table`, or the topic of a MESSAGE."""
    if change.op == "MESSAGE":
        return change.table_name
    return f"{change.schema_name}.{change.table_name}"


def resolve_table(catalog: Mapping[str, TableInfo], name: str) -> str:
    """The catalog key of `name`: `schema.table`, or a bare name tracked in one schema only.

    FilterError (a 400) when no tracked table has that name, or when several schemas do.
    """
    if name in catalog:
        return name
    found = sorted(key for key, info in catalog.items() if info.name == name)
    if len(found) == 1:
        return found[0]
    if found:
        raise FilterError(
            f"table {name!r} is ambiguous: it is tracked as {' and '.join(found)}; "
            "name it as schema.table"
        )
    raise FilterError(f"unknown table {name!r}: it is not tracked by pgtide")


@dataclass(frozen=True)
class ColumnFilter:
    """One `column=op.value` filter as written (before it meets a table's types)."""

    column: str
    op: str
    raw: str


@dataclass(frozen=True)
class Equality:
    """A filter's `column=eq.value` on one table: what the hub indexes it by."""

    column: str
    kind: str
    key: Any  # values.parse(kind, value): equal to values.of_row of a row holding it


@dataclass(frozen=True)
class StreamFilter:
    """What a subscriber asked for, checked against the catalog and compiled per table."""

    tables: frozenset[str] | None  # `schema.table` names; None = every tracked table
    ops: frozenset[str]
    topics: frozenset[str] | None
    columns: tuple[ColumnFilter, ...] = ()
    predicates: Mapping[str, tuple[Predicate, ...]] = field(
        default_factory=dict, compare=False, hash=False
    )
    # A branch-pinned subscriber: only rows whose tenant column (branch_id, unless an app
    # declares another for the table) holds this value, whatever it asked.
    branch: str | None = None
    shared_tables: frozenset[str] = frozenset()  # tables without a tenant it may read
    tenants: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    # Pinned: the tables it may read (with their tenant column, or shared), when it
    # subscribed. A TRUNCATE carries no row, so only this says whether it may see one.
    readable: frozenset[str] = frozenset()
    # Per table with predicates, its first `eq` filter: a row op can match only if its new
    # or old image holds that value (cdc/hub.py routes changes by it).
    equalities: Mapping[str, Equality] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[Any, ...]:
        """Equal keys select equal events: the hub encodes a batch once per key."""
        return (
            self.tables,
            self.ops,
            self.topics,
            self.columns,
            self.branch,
            self.shared_tables,
            self.readable,
        )

    def _in_branch(self, table: str, img: Image | None) -> bool:
        if img is None:
            return False
        value = img.get(self.tenants.get(table, TENANT))
        return value is not None and str(value) == self.branch

    def _branch_allows(self, op: str, table: str, new: Image | None, old: Image | None) -> bool:
        if self.branch is None:
            return True
        if op == "MESSAGE":
            return self._in_branch(table, new)  # a message payload naming this branch
        if op == "TRUNCATE":  # no row to judge by: only tables it may read
            return table in self.readable
        if table in self.shared_tables:
            return True
        return self._in_branch(table, new) or self._in_branch(table, old)

    @property
    def rewrites(self) -> bool:
        """Whether `view` may change an event (a branch pin, column filters): else it never does."""
        return self.branch is not None or bool(self.columns)

    def _holds(self, table: str, img: Image | None, preds: tuple[Predicate, ...]) -> bool:
        """Whether a row with this image is one the subscriber holds: its branch, its filters."""
        if img is None:
            return False
        pinned = self.branch is not None and table not in self.shared_tables
        return (not pinned or self._in_branch(table, img)) and all(p(img) for p in preds)

    def view(self, change: Change) -> Change:
        """The change as this subscriber may see it.

        For a pinned subscriber an UPDATE that moves a row out of its branch is a
        DELETE (no new image), one that moves a row in is an INSERT (no old image):
        it never sees another branch's values. An UPDATE whose new image no longer
        passes the column filters (so the old one did) is marked `left`: the
        subscriber drops the row. Anything else is returned as is.
        """
        if change.op != "UPDATE" or not self.rewrites:
            return change
        table = table_key(change)
        if self.branch is not None and table not in self.shared_tables:
            new_in = self._in_branch(table, change.new_row)
            old_in = self._in_branch(table, change.old_row)
            if new_in and not old_in:
                return replace(change, op="INSERT", old_json=None, changed=None)
            if old_in and not new_in:
                return replace(change, op="DELETE", row_json=None, changed=None)
        preds = self.predicates.get(table) if self.columns else None
        new = change.new_row
        if preds is not None and new is not None and not all(p(new) for p in preds):
            return replace(change, left=True)
        return change

    def reads_rows(self, table: str) -> bool:
        """Whether `matches_row` for `table` depends on the row's values (else any row will do)."""
        return bool(self.columns) or (self.branch is not None and table not in self.shared_tables)

    def matches_row(self, table: str, row: Image) -> bool:
        """Whether a current row (a snapshot row) of `table` passes the column filters."""
        if self.tables is not None and table not in self.tables:
            return False
        if not self._branch_allows("INSERT", table, row, None):
            return False
        if not self.columns:
            return True
        preds = self.predicates.get(table)
        return preds is not None and all(p(row) for p in preds)

    def selects(self, change: Change, table: str | None = None) -> bool:
        """`matches` for a change, reading its row images only when a pin or a column
        filter needs their values: most subscribers never decode a row. `table` is
        `table_key(change)` when the caller has it already (the hub's fan-out)."""
        return self._passes(
            change.op,
            table_key(change) if table is None else table,
            lambda: (change.new_row, change.old_row),
        )

    def matches(self, op: str, table: str, new: Image | None, old: Image | None) -> bool:
        """Whether a change (or message) with these images passes this filter."""
        return self._passes(op, table, lambda: (new, old))

    def _passes(
        self, op: str, table: str, images: Callable[[], tuple[Image | None, Image | None]]
    ) -> bool:
        """The one implementation of `selects` and `matches`: names first, images last.

        The hot path of fan-out (once per distinct filter and change): an unpinned
        column filter is checked with no further calls than its predicates.
        """
        if op == "MESSAGE":
            if self.topics is None or table not in self.topics:
                return False
        elif op not in self.ops or (self.tables is not None and table not in self.tables):
            return False
        if self.branch is not None:
            new, old = images()
            if not self._branch_allows(op, table, new, old):
                return False
        if not self.columns or op == "TRUNCATE" or op == "MESSAGE":
            return True
        preds = self.predicates.get(table)
        if preds is None:  # the table lacks a filtered column
            return False
        new, old = images()
        if self.branch is not None:
            # An image counts when the subscriber would hold that row: for a pinned one, an
            # image of another branch passing the filters does not (its view would be a row
            # it never had).
            return self._holds(table, new, preds) or self._holds(table, old, preds)
        return _either(preds, new, old)


def _either(preds: tuple[Predicate, ...], new: Image | None, old: Image | None) -> bool:
    """Whether either image passes every predicate (loops, not generators: a hot path)."""
    for img in (new, old):
        if img is None:
            continue
        for p in preds:
            if not p(img):
                break
        else:
            return True
    return False


def parse_list(value: str, what: str) -> list[str]:
    """Split `a,b,c`, rejecting empty items."""
    items = [v.strip() for v in value.split(",")]
    if not value or any(not v for v in items):
        raise FilterError(f"{what} must be a comma-separated list of names, got {value!r}")
    return items


def parse_ops(value: str | None) -> frozenset[str]:
    """`ops=insert,update` → {"INSERT", "UPDATE"}; absent → every row op."""
    if value is None:
        return ROW_OPS
    ops = {v.upper() for v in parse_list(value, "ops")}
    unknown = ops - ROW_OPS
    if unknown:
        raise FilterError(
            f"unknown op {sorted(unknown)[0].lower()!r} in ops: "
            "use insert, update, delete, truncate"
        )
    return frozenset(ops)


def split_in_list(raw: str) -> list[str]:
    """`(a,"b,c",d)` → ["a", "b,c", "d"] (PostgREST's quoting)."""
    if len(raw) < 2 or raw[0] != "(" or raw[-1] != ")":
        raise FilterError(f"in. needs a parenthesised list like in.(a,b), got {raw!r}")
    body, items, cur, quoted, i = raw[1:-1], [], [], False, 0
    while i < len(body):
        ch = body[i]
        if ch == '"':
            quoted = not quoted
        elif ch == "\\" and quoted and i + 1 < len(body):
            i += 1
            cur.append(body[i])
        elif ch == "," and not quoted:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    if quoted:
        raise FilterError(f"unterminated quote in {raw!r}")
    items.append("".join(cur))
    return items


def parse_column_filter(column: str, value: str) -> ColumnFilter:
    """`status`, `in.(new,paid)` → ColumnFilter; the operator must be known."""
    op, dot, raw = value.partition(".")
    if not dot or op not in OPERATORS:
        raise FilterError(
            f"filter {column}={value!r}: unknown operator {op!r}; "
            "use eq, neq, lt, lte, gt, gte, in or is (as column=op.value)"
        )
    return ColumnFilter(column, op, raw)


def _compile(flt: ColumnFilter, kind: str, table: str) -> Predicate:
    col, op = flt.column, flt.op
    where = f"filter {col}={flt.op}.{flt.raw} on {table}"
    if op == "is":
        targets = {"null": None, "true": True, "false": False}
        if flt.raw.lower() not in targets:
            raise FilterError(f"{where}: is. takes null, true or false")
        target = targets[flt.raw.lower()]
        return lambda img: img.get(col) is target
    if kind == JSON:
        raise FilterError(f"{where}: column {col} holds json; only is.null is supported")
    if op in ORDERED and kind == BOOL:
        raise FilterError(f"{where}: {op} does not apply to a boolean column")
    raw_values = split_in_list(flt.raw) if op == "in" else [flt.raw]
    try:
        # Keys that compare as PostgreSQL compares (NaN, infinities, years past 9999).
        keys = [values.parse(kind, v) for v in raw_values]
    except ValueError:
        raise FilterError(f"{where}: {flt.raw!r} is not a valid {kind} value") from None
    of_row = values.of_row
    if op == "in":
        members = keys

        def pred_in(img: Image) -> bool:
            v = of_row(kind, img.get(col))
            return v is not None and v in members

        return pred_in
    compare, value = _COMPARE[op], keys[0]

    def pred(img: Image) -> bool:
        # A row value the kind cannot read raises: the hub ends this subscriber alone.
        v = of_row(kind, img.get(col))
        return v is not None and compare(v, value)

    return pred


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le,
    "gt": operator.gt, "gte": operator.ge,
}  # fmt: skip


def build_filter(
    catalog: Mapping[str, TableInfo],
    *,
    tables: str | None,
    ops: str | None,
    topics: str | None,
    columns: Iterable[tuple[str, str]],
    branch: str | None = None,
    shared_tables: Iterable[str] = (),
    tenants: Mapping[str, str] | None = None,
) -> StreamFilter:
    """Check a request's filters against the tracked tables and compile them.

    Raises FilterError (a 400) for an unknown table, an unknown column (one that
    none of the selected tables has), an unknown operator, a value of the wrong
    type or bad `ops`. Tables are named `schema.table`, or by a bare name tracked in
    one schema only. `tenants` maps a table to its tenant column (default branch_id).
    """
    tenants = dict(tenants or {})
    selected: frozenset[str] | None = None
    if tables is not None:
        selected = frozenset(resolve_table(catalog, t) for t in parse_list(tables, "tables"))
    topic_set = frozenset(parse_list(topics, "topics")) if topics is not None else None
    parsed = tuple(parse_column_filter(c, v) for c, v in columns)
    in_scope = [catalog[t] for t in sorted(selected)] if selected else list(catalog.values())
    predicates: dict[str, tuple[Predicate, ...]] = {}
    for flt in parsed:
        if not any(flt.column in info.columns for info in in_scope):
            raise FilterError(f"filter on unknown column {flt.column!r}: no selected table has it")
    equalities: dict[str, Equality] = {}
    if parsed:
        for info in in_scope:
            if all(f.column in info.columns for f in parsed):
                predicates[info.qualified] = tuple(
                    _compile(f, info.columns[f.column], info.name) for f in parsed
                )
                eq = next((f for f in parsed if f.op == "eq"), None)
                if eq is not None:
                    kind = info.columns[eq.column]
                    equalities[info.qualified] = Equality(
                        eq.column, kind, values.parse(kind, eq.raw)
                    )
    shared = frozenset(_known(catalog, shared_tables))
    readable: set[str] = set()
    if branch is not None:
        # Pinned: a table without its tenant column is readable only when shared.
        readable = {t for t, info in catalog.items()
                    if tenants.get(t, TENANT) in info.columns} | shared  # fmt: skip
        if selected is not None and not selected <= readable:
            hidden = sorted(selected - readable)[0]
            raise FilterError(f"table {hidden!r} is not readable with a branch-pinned token")
    return StreamFilter(
        selected, parse_ops(ops), topic_set, parsed, predicates,
        branch=branch, shared_tables=shared, tenants=tenants, readable=frozenset(readable),
        equalities=equalities,
    )  # fmt: skip


def _known(catalog: Mapping[str, TableInfo], names: Iterable[str]) -> Iterator[str]:
    """The catalog keys of the names that resolve (a setting may name untracked tables)."""
    for name in names:
        with contextlib.suppress(FilterError):
            yield resolve_table(catalog, name)


def kind_of(type_name: str, category: str) -> str:
    """A column kind from PostgreSQL's type name and type category."""
    if type_name == "uuid":
        return UUID
    if type_name in ("time", "timetz"):
        return CLOCK
    # Arrays and composite rows arrive as JSON arrays and objects: only is.null applies.
    if type_name in ("json", "jsonb") or category in ("A", "C"):
        return JSON
    return {"N": NUMBER, "B": BOOL, "D": TIME}.get(category, TEXT)
