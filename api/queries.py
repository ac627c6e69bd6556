"""The write API's runtime SQL, kept in `queries.sql` as named blocks and parsed once."""

from __future__ import annotations

from pathlib import Path
from typing import LiteralString

from cdc.queries import load

queries: dict[str, LiteralString] = load(Path(__file__).with_name("queries.sql"))
