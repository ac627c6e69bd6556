"""The subject token encoding of table, schema and topic names (cdc/subjects.py). Pure."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.subjects import (
    decode_token,
    encode_token,
    parse_subject,
    subject_of,
    table_subject,
    topic_subject,
)

VALID_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
# Any text PostgreSQL can hold (no NUL), including what subjects reserve.
names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("orders", "orders"),
        ("stock_requests", "stock_requests"),
        ("Odd.Name", "Odd-2EName"),
        ("café", "caf-C3-A9"),
        ("a b", "a-20b"),
        ("*", "-2A"),
        (">", "-3E"),
        ("-", "-2D"),
        ("", "-"),
        ("$SYS", "-24SYS"),
    ],
)
def test_documented_examples(name: str, token: str) -> None:
    assert encode_token(name) == token
    assert decode_token(token) == name


@given(names)
def test_every_name_is_a_valid_token_that_decodes_back(name: str) -> None:
    token = encode_token(name)
    assert VALID_TOKEN.fullmatch(token), token
    assert decode_token(token) == name


@given(names, names)
def test_distinct_names_get_distinct_tokens(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)


@pytest.mark.parametrize("token", ["", "a.b", "-41", "-2e", "-Z1", "a-", "*", ">", "a b", "-C3"])
def test_non_canonical_or_invalid_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        decode_token(token)


def test_subjects_of_changes_and_messages() -> None:
    assert table_subject("PGTIDE", "public", "clients") == "PGTIDE.table.public.clients"
    assert topic_subject("PGTIDE", "orders.ready") == "PGTIDE.topic.orders-2Eready"
    assert subject_of("PGTIDE", "MESSAGE", "public", "t") == "PGTIDE.topic.t"
    assert subject_of("PGTIDE", "TRUNCATE", "s p", "t") == "PGTIDE.table.s-20p.t"
    assert parse_subject("PGTIDE", "PGTIDE.table.s-20p.Odd-2EName") == ("table", "s p", "Odd.Name")
    assert parse_subject("PGTIDE", "PGTIDE.topic.-") == ("topic", None, "")
    with pytest.raises(ValueError):
        parse_subject("PGTIDE", "OTHER.table.a.b")


@given(names, names)
def test_subjects_parse_back(schema: str, table: str) -> None:
    assert parse_subject("S", table_subject("S", schema, table)) == ("table", schema, table)
    assert parse_subject("S", topic_subject("S", table)) == ("topic", None, table)
