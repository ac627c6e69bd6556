"""The stream cursor: a change's `seq`, written on the wire as a decimal string.

Pure: no database access, so it is tested byte for byte.
"""

from __future__ import annotations

import re
from typing import NewType

from cdc.errors import CursorError

Cursor = NewType("Cursor", int)

MAX_CURSOR = 2**63 - 1  # seq is a bigint
_DIGITS = re.compile(r"[0-9]{1,19}")


def parse_cursor(text: str) -> Cursor:
    """Parse a wire cursor ("0", "42"); raise `CursorError` for anything else.

    Signs, spaces, leading zeros (other than "0" itself), non-ASCII digits and
    values beyond a bigint are all rejected, so one position has one spelling.
    """
    if not isinstance(text, str) or not _DIGITS.fullmatch(text):
        raise CursorError(f"malformed cursor {text!r}: expected a decimal sequence number")
    if len(text) > 1 and text[0] == "0":
        raise CursorError(f"malformed cursor {text!r}: leading zeros are not allowed")
    value = int(text)
    if value > MAX_CURSOR:
        raise CursorError(f"malformed cursor {text!r}: beyond the largest sequence number")
    return Cursor(value)


def format_cursor(cursor: int) -> str:
    """The wire form of a cursor."""
    if cursor < 0 or cursor > MAX_CURSOR:
        raise CursorError(f"cursor {cursor} is out of range")
    return str(cursor)
