"""The `pgtide audit` table: one line per change, as wide as the terminal and no wider.

`seq`, `at`, `table`, `op`, `pk` and `actor` are always shown; `origin`, `changed`
and `txid` join them while they fit. Over the width, values are cut with `…` in a
set order rather than wrapped (docs/audit.md, `pgtide audit`). Values are data:
rich `Text` cells (never markup), control characters escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import OverflowMethod
from rich.table import Table
from rich.text import Text

from api.auditview import key_text, utc_text
from cdc.reader import Change


@dataclass(frozen=True)
class _Column:
    """A column of the audit table and how far it may be narrowed to fit the terminal."""

    header: str
    cells: list[str]
    floor: int = 0  # may be cut down to this width (0: never cut)
    step: bool = False  # cut to the floor at once, never in between
    overflow: OverflowMethod = "ellipsis"
    # (row, width) -> the cell's text, where cutting it short with `…` would lose the point
    summary: Callable[[int, int], str] | None = None

    @property
    def natural(self) -> int:
        return max(cell_len(v) for v in (self.header, *self.cells))

    @property
    def narrowest(self) -> int:
        return min(self.floor, self.natural) if self.floor else self.natural


SEP = 3  # " │ " between two columns
CORE = 6  # seq, at, table, op, pk, actor: always shown; origin, changed, txid while they fit
# Over the terminal's width, narrowed in this order, each down to its floor: `at` loses
# its milliseconds (seq orders anyway), a key keeps a prefix (of a uuid, as a short hash
# does), then actor and table lose what is needed.
NARROWED = ("at (UTC)", "pk", "actor", "table")


def _printable(text: str) -> str:
    """One line, no control characters: a value can neither break the table nor drive
    the terminal (a newline shows as \\n, an escape as \\x1b)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _names(names: list[str], width: int) -> str:
    """`a, b, c, d` at `width`: as many names as fit, then how many more (`a, b +2`)."""
    if not names:
        return ""
    for shown in range(len(names), 0, -1):
        more = len(names) - shown
        head = ", ".join(names[:shown]) + (f" +{more}" if more else "")
        if cell_len(head) <= width:
            return head
    return f"{len(names)} columns"


def _columns(changes: list[Change]) -> list[_Column]:
    def cells(value: Callable[[Change], str]) -> list[str]:
        return [_printable(value(c)) for c in changes]

    def changed(row: int, width: int) -> str:
        return _names([_printable(n) for n in changes[row].changed or ()], width)

    return [
        _Column("seq", cells(lambda c: str(c.seq))),
        _Column("at (UTC)", cells(lambda c: utc_text(c.at)), floor=19, step=True, overflow="crop"),
        _Column("table", cells(lambda c: c.table_name), floor=10),
        _Column("op", cells(lambda c: c.op)),
        _Column("pk", cells(lambda c: key_text(c.pk)), floor=9, step=True),
        _Column("actor", cells(lambda c: c.actor or ""), floor=8),
        _Column("origin", cells(lambda c: c.origin or ""), floor=8),
        _Column("changed", cells(lambda c: ", ".join(c.changed or ())), floor=10, summary=changed),
        _Column("txid", cells(lambda c: str(c.txid))),
    ]


def _total(widths: list[int]) -> int:
    shown = [w for w in widths if w]
    return sum(shown) + SEP * (len(shown) - 1)


def _fit(columns: list[_Column], width: int) -> list[int]:
    """Each column's width (0: left out) for a table at most `width` cells wide."""
    widths = [c.natural for c in columns[:CORE]]
    for header in NARROWED:
        excess = _total(widths) - width
        if excess <= 0:
            break
        i, column = next((i, c) for i, c in enumerate(columns) if c.header == header)
        widths[i] = column.narrowest if column.step else max(column.narrowest, widths[i] - excess)
    for column in columns[CORE:]:
        fits = min(column.natural, width - _total(widths) - SEP)
        widths.append(fits if fits >= column.narrowest else 0)
    return widths


def table(changes: list[Change], width: int = 80) -> Table:
    """The listing as a rich table at most `width` cells wide (a terminal's width).

    Long values are cut with `…` (a key to a prefix, a list of columns to its first
    names and how many more) rather than wrapped; `--format jsonl` has them whole.
    """
    columns = _columns(changes)
    shown = [(c, w) for c, w in zip(columns, _fit(columns, width), strict=True) if w]
    t = Table(box=box.MINIMAL_HEAVY_HEAD, show_edge=False, pad_edge=False)
    for column, w in shown:
        t.add_column(column.header, width=w, no_wrap=True, overflow=column.overflow)
    for row in range(len(changes)):
        # Text cells: rich would read a plain str as markup (`[/bold]` raises).
        t.add_row(*(Text(c.summary(row, w) if c.summary else c.cells[row]) for c, w in shown))
    return t
