"""Runtime SQL, kept in `queries.sql` as named blocks (`-- name: x`) and parsed once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import LiteralString, cast

_BLOCK = re.compile(r"^-- name: (\w+)\n", re.MULTILINE)


def _parse(text: str) -> dict[str, LiteralString]:
    parts = _BLOCK.split(text)
    out: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.startswith("--")]
        # Read from our own file, never from input: safe to treat as literal SQL.
        out[name] = cast(LiteralString, "\n".join(lines).strip().rstrip(";"))  # type: ignore[redundant-cast]
    return out


def load(path: Path) -> dict[str, LiteralString]:
    """Parse a file of named blocks in this format (api/ keeps its own queries file)."""
    return _parse(path.read_text(encoding="utf-8"))


queries: dict[str, LiteralString] = load(Path(__file__).with_name("queries.sql"))
