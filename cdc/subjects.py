"""NATS subjects of the change stream, and the token encoding of names. Pure.

Every change is published on one subject of the stream's namespace:

    <stream>.table.<schema>.<table>     row changes (INSERT, UPDATE, DELETE, TRUNCATE)
    <stream>.topic.<topic>              pgtide.publish messages (op MESSAGE)

PostgreSQL names and topics may hold any character (`"Odd.Name"`, `*`, spaces,
non-ASCII), while a subject token must be non-empty and must not contain `.`,
`*`, `>` or white space. A name is therefore written as a token made of
`[A-Za-z0-9_]` only, every other UTF-8 byte (including `-`) as `-XX`, two
uppercase hex digits; the empty name is the token `-`. The encoding is
reversible and one-to-one: `orders` -> `orders`, `stock_requests` ->
`stock_requests`, `Odd.Name` -> `Odd-2EName`, `café` -> `caf-C3-A9`. Subjects
are case-sensitive, as PostgreSQL's quoted names are (docs/scale-out.md).
"""

from __future__ import annotations

import re

_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_TOKEN = re.compile(r"(?:[A-Za-z0-9_]|-[0-9A-F]{2})+|-")

TABLE = "table"
TOPIC = "topic"


def encode_token(name: str) -> str:
    """The subject token of a name (table, schema or topic)."""
    if name == "":
        return "-"
    return "".join(chr(b) if b in _PLAIN else f"-{b:02X}" for b in name.encode("utf-8"))


def decode_token(token: str) -> str:
    """The name a token encodes; ValueError for a string `encode_token` never returns."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not a pgtide subject token: {token!r}")
    if token == "-":
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "-":
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    name = out.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if encode_token(name) != token:  # e.g. `-41` for `A`: not the one spelling of `A`
        raise ValueError(f"not the canonical token of {name!r}: {token!r}")
    return name


def table_subject(stream: str, schema: str, table: str) -> str:
    """The subject of a row change of `schema.table`."""
    return f"{stream}.{TABLE}.{encode_token(schema)}.{encode_token(table)}"


def topic_subject(stream: str, topic: str) -> str:
    """The subject of a `pgtide.publish(topic, ...)` message."""
    return f"{stream}.{TOPIC}.{encode_token(topic)}"


def subject_of(stream: str, op: str, schema: str, table: str) -> str:
    """The subject of a change: messages carry their topic in `table`."""
    if op == "MESSAGE":
        return topic_subject(stream, table)
    return table_subject(stream, schema, table)


def all_subjects(stream: str) -> str:
    """The wildcard of every subject of the stream (its configured subject)."""
    return f"{stream}.>"


def parse_subject(stream: str, subject: str) -> tuple[str, str | None, str]:
    """(kind, schema or None, table or topic) of a subject; ValueError if it is not one."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[0] == stream and parts[1] == TABLE:
        return TABLE, decode_token(parts[2]), decode_token(parts[3])
    if len(parts) == 3 and parts[0] == stream and parts[1] == TOPIC:
        return TOPIC, None, decode_token(parts[2])
    raise ValueError(f"not a subject of stream {stream}: {subject!r}")
