"""CSV import: how a cell becomes a value of a field's type, and a value a COPY cell.

`converter(annotation)` reads a cell for a field of a resource's create model
(the model validates the value afterwards); `copy_text(value)` writes a
validated column value in COPY's text format. Pure functions, no database.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

from psycopg.types.json import Jsonb

Convert = Callable[[str], Any]

# COPY text format: backslash escapes for the characters that end a cell or a row.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_TRUE, _FALSE = frozenset({"true", "t", "1"}), frozenset({"false", "f", "0"})


def _unwrap(annotation: Any) -> Any:
    """The bare type of a field: without `| None` and `Annotated` (a union stays a union)."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _bool(cell: str) -> bool:
    word = cell.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError("expected true/false, t/f or 1/0")


def _number(kind: Callable[[str], Any]) -> Convert:
    def convert(cell: str) -> Any:
        if "_" in cell:
            raise ValueError(f"{cell.strip()!r} is not a number")
        try:
            return kind(cell.strip())
        except (ValueError, InvalidOperation):
            raise ValueError(f"{cell.strip()!r} is not a number") from None

    return convert


def _json(cell: str) -> Any:
    def refuse(word: str) -> Any:
        raise ValueError(f"{word} is not JSON")

    try:
        return json.loads(cell, parse_constant=refuse)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at position {exc.pos}") from None


def _datetime(cell: str) -> datetime:
    try:
        return datetime.fromisoformat(cell.strip())
    except ValueError:
        raise ValueError("expected an ISO 8601 date and time (2030-01-02T10:00:00+01:00)") from None


def _iso(kind: type[date] | type[time]) -> Convert:
    def convert(cell: str) -> Any:
        try:
            return kind.fromisoformat(cell.strip())
        except ValueError:
            raise ValueError(f"expected an ISO 8601 {kind.__name__}") from None

    return convert


def _enum(kind: type[Enum]) -> Convert:
    def convert(cell: str) -> Any:
        for value in (cell, cell.strip()):
            try:
                return kind(value)
            except ValueError:
                pass
        try:
            return kind(int(cell))
        except ValueError:
            raise ValueError(f"expected one of {', '.join(str(m.value) for m in kind)}") from None

    return convert


def _literal(choices: tuple[Any, ...]) -> Convert:
    if all(isinstance(c, str) for c in choices):
        return str
    if all(isinstance(c, int) and not isinstance(c, bool) for c in choices):
        return _number(int)
    return str  # mixed literals: the model decides


def converter(annotation: Any) -> Convert:
    """How a cell becomes a value of a field's type (the model validates it afterwards).

    str: the text as it is; int, float, Decimal: parsed (no `_`); bool: true/false,
    t/f, 1/0 in any case; UUID; datetime, date, time: ISO 8601; list, dict: JSON
    text; enums and literals: their values. Anything else is passed as text.
    """
    bare = _unwrap(annotation)
    origin = get_origin(bare)
    if origin is Literal:
        return _literal(get_args(bare))
    if origin in (list, dict) or bare in (list, dict):
        return _json
    simple: dict[Any, Convert] = {
        str: str, bool: _bool, int: _number(int), float: _number(float),
        Decimal: _number(Decimal), UUID: lambda cell: UUID(cell.strip()),
        datetime: _datetime, date: _iso(date), time: _iso(time),
    }  # fmt: skip
    if bare in simple:
        return simple[bare]
    if isinstance(bare, type) and issubclass(bare, Enum):
        return _enum(bare)
    if (
        isinstance(bare, type)
        and bare.__module__.startswith("pydantic")
        and "Datetime" in (bare.__name__)
    ):
        return _datetime  # AwareDatetime, NaiveDatetime, PastDatetime, FutureDatetime
    return str


def copy_text(value: Any) -> str:
    r"""One value as a cell of COPY's text format (`\N` for null), escaped."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        return "t" if value else "f"
    elif isinstance(value, Jsonb):
        text = json.dumps(value.obj, separators=(",", ":"), ensure_ascii=False)
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    elif isinstance(value, Enum):
        text = str(value.value)
    elif isinstance(value, bytes):
        text = "\\x" + value.hex()
    else:  # int, Decimal, float, UUID, datetime, date, time: PostgreSQL reads str() of each
        text = str(value)
    return text.translate(_COPY_ESCAPES)
