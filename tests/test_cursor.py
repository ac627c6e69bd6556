"""The wire cursor: one spelling per position, clear errors for the rest (no database)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.cursor import MAX_CURSOR, format_cursor, parse_cursor
from cdc.errors import CursorError


@pytest.mark.parametrize(
    "text,value", [("0", 0), ("1", 1), ("42", 42), (str(MAX_CURSOR), MAX_CURSOR)]
)
def test_valid_cursors_parse(text: str, value: int) -> None:
    assert parse_cursor(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "-1",
        "+1",
        "01",
        "1.0",
        "1e3",
        "abc",
        "0x10",
        "١٢",
        str(MAX_CURSOR + 1),
        "9" * 20,
        "1;DROP TABLE pgtide.sync_log",
        "null",
    ],
)
def test_malformed_cursors_are_rejected_with_a_clear_error(text: str) -> None:
    with pytest.raises(CursorError, match="malformed cursor"):
        parse_cursor(text)


def test_cursor_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_cursor("x")


@given(st.integers(min_value=0, max_value=MAX_CURSOR))
def test_format_and_parse_round_trip(n: int) -> None:
    assert parse_cursor(format_cursor(n)) == n


@pytest.mark.parametrize("n", [-1, MAX_CURSOR + 1])
def test_format_rejects_out_of_range(n: int) -> None:
    with pytest.raises(CursorError):
        format_cursor(n)
