"""The filter language, table-driven from filter_cases.json: no database.

Each case builds a stream filter on a one-column table of the case's kind and
matches a row image as the database would send it (numbers loaded exactly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cdc.errors import FilterError
from cdc.filters import StreamFilter, TableInfo, build_filter
from cdc.values import exact_loads

CASES: list[dict[str, Any]] = json.loads(
    (Path(__file__).with_name("filter_cases.json")).read_text(encoding="utf-8")
)["cases"]


def catalog(kind: str) -> dict[str, TableInfo]:
    info = TableInfo("public", "t", {"id": "number", "c": kind}, ("id",))
    return {info.qualified: info}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['kind']}:{c['filter']}" for c in CASES])
def test_filter_case(case: dict[str, Any]) -> None:
    def build() -> StreamFilter:
        columns = [("c", case["filter"])]
        return build_filter(catalog(case["kind"]), tables="t", ops=None, topics=None,
                            columns=columns)  # fmt: skip

    if case["match"] == "error":
        with pytest.raises(FilterError):
            build()
        return
    flt = build()
    row = exact_loads(json.dumps({"id": 1, "c": case["value"]}))
    assert flt.matches("INSERT", "public.t", row, None) is case["match"]
    # A change matches when its new or its old image does: a row leaving the filter.
    assert flt.matches("UPDATE", "public.t", {"id": 1, "c": None}, row) is (
        case["match"] or flt.matches("INSERT", "public.t", {"id": 1, "c": None}, None)
    )


def test_a_filter_on_a_column_no_selected_table_has_is_refused() -> None:
    with pytest.raises(FilterError, match="unknown column"):
        build_filter(catalog("text"), tables="t", ops=None, topics=None, columns=[("x", "eq.1")])


def test_a_bare_table_name_tracked_in_two_schemas_is_ambiguous() -> None:
    a = TableInfo("public", "orders", {"id": "number"}, ("id",))
    b = TableInfo("sales", "orders", {"id": "number"}, ("id",))
    tables = {a.qualified: a, b.qualified: b}
    with pytest.raises(FilterError, match="ambiguous"):
        build_filter(tables, tables="orders", ops=None, topics=None, columns=[])
    flt = build_filter(tables, tables="sales.orders", ops=None, topics=None, columns=[])
    assert flt.matches("INSERT", "sales.orders", {"id": 1}, None)
    assert not flt.matches("INSERT", "public.orders", {"id": 1}, None)


def test_truncate_and_messages() -> None:
    info = TableInfo("public", "t", {"id": "number", "c": "text"}, ("id",))
    flt = build_filter({info.qualified: info}, tables="t", ops="truncate", topics="news",
                       columns=[("c", "eq.x")])  # fmt: skip
    assert flt.matches("TRUNCATE", "public.t", None, None)  # affects every row
    assert not flt.matches("INSERT", "public.t", {"id": 1, "c": "x"}, None)  # not in ops
    assert flt.matches("MESSAGE", "news", {"any": 1}, None)
    assert not flt.matches("MESSAGE", "other", {"any": 1}, None)
