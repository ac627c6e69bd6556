"""How `pgtide audit` prints: JSON lines or CSV; a row's story as a diff (the table:
api/audittable.py).

JSON lines: one object per change with the fields of `GET /api/sync-log`.
CSV: a header row of the same fields; an empty cell is null, `pk`, `row`,
`old` and `changed` hold compact JSON, `at` is ISO 8601. Capture stores an
empty actor, origin or mutation id as null, so an empty cell is never ambiguous.
Both parse back to the same rows (`read_csv_record` is the inverse of a CSV row).

Values are data, never markup or formulas: the terminal shows them literally
(rich `Text`, so an origin of `[/bold]` or `[link=…]` prints as written), and a
CSV cell that a spreadsheet would run as a formula (starting with = + - @, tab
or carriage return), or that starts with an apostrophe, gets a leading `'`
(OWASP's rule against CSV injection); `read_csv_record` removes it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from cdc.audit import HistoryEntry, change_record
from cdc.jsontext import dumps
from cdc.reader import Change

FIELDS = (
    "cursor", "seq", "txid", "id", "at", "schema", "table", "op", "pk", "row", "old",
    "changed", "actor", "origin", "mutation_id", "db_role",
)  # fmt: skip
JSON_FIELDS = frozenset({"pk", "row", "old", "changed"})
INT_FIELDS = frozenset({"seq", "id"})
# A cell starting with one of these is a formula to Excel, LibreOffice or Sheets;
# the apostrophe is escaped too, so that unescaping is exact.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _cell(text: str) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def jsonl_lines(changes: Iterable[Change]) -> Iterable[str]:
    """One compact JSON object per change."""
    for c in changes:
        yield dumps(change_record(c))


def csv_writer(stream: IO[str]) -> Any:
    """A CSV writer for changes; the header row is written at once."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(FIELDS)
    return writer


def csv_row(c: Change) -> list[str]:
    """A change as CSV cells."""
    rec = change_record(c)
    cells = []
    for name in FIELDS:
        value = rec[name]
        if value is None:
            cells.append("")
        elif name in JSON_FIELDS:
            cells.append(_cell(dumps(value)))
        elif isinstance(value, datetime):
            cells.append(_cell(value.isoformat()))
        else:
            cells.append(_cell(str(value)))
    return cells


def read_csv_record(row: Mapping[str, str]) -> dict[str, Any]:
    """A CSV row back as the JSON-lines object (the inverse of `csv_row`)."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        cell = _uncell(row[name])
        if row[name] == "":
            out[name] = None
        elif name in JSON_FIELDS:
            out[name] = json.loads(cell)
        elif name in INT_FIELDS:
            out[name] = int(cell)
        else:
            out[name] = cell
    return out


def key_text(pk: Mapping[str, Any] | None) -> str:
    """A row's key as a person reads it: the bare value of a one-column key, else JSON."""
    if not pk:
        return ""
    if len(pk) == 1:
        return str(next(iter(pk.values())))
    return dumps(pk)


def utc_text(at: datetime) -> str:
    """`at` in UTC to the millisecond, as the table and the history show it."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _value(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, default=str)


def print_history(console: Console, table_name: str, pk: Mapping[str, Any],
                  entries: list[HistoryEntry]) -> None:  # fmt: skip
    """A row's story as a readable diff: + added, ~ changed, - removed."""
    console.print(Text(f"{table_name} {key_text(pk)}: {len(entries)} change(s)", style="bold"))
    for e in entries:
        c = e.change
        who = " ".join(
            part for part in (
                f"by {c.actor}" if c.actor else "",
                f"from {c.origin}" if c.origin else "",
                f"as {c.db_role}",
                f"txid {c.txid}",
            ) if part
        )  # fmt: skip
        head = Text()
        head.append(f"\nseq {c.seq}  ", style="cyan")
        head.append(f"{utc_text(c.at)}  ")
        head.append(c.op, style="bold")
        head.append(f"  {who}")
        console.print(head)
        width = max((len(k) for k in e.diff), default=0)
        for col, (before, after) in e.diff.items():
            line = Text("  ")
            if c.op == "INSERT":
                line.append(f"+ {col:<{width}}  {_value(after)}", style="green")
            elif c.op in ("DELETE", "TRUNCATE"):
                line.append(f"- {col:<{width}}  {_value(before)}", style="red")
            else:
                line.append(f"~ {col:<{width}}  ", style="yellow")
                line.append(_value(before), style="red")
                line.append(" → ")
                line.append(_value(after), style="green")
            console.print(line)
