"""CSV import, the pure part: read a CSV file, validate every record, make COPY data.

`prepare(res, source)` reads UTF-8 CSV (RFC 4180: `,`, `"` quotes, CRLF or LF)
whose first line names fields of the resource's create model, coerces each
cell by the field's type, validates each record with the model (the same
strict rules as a JSON create) and writes the validated rows as COPY text
data to a temporary file. Nothing here touches a database: the HTTP route
(api/csvroute.py) and `pgtide import` call it before taking a connection, and
api/csvcopy.py streams the result into the table. Cells: api/csvcells.py. Any refusal is an ApiError
whose detail names the record's line (the header is line 1) and the column.
docs/writes.md has the rules.
"""

from __future__ import annotations

import bisect
import csv
import io
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from pydantic import ValidationError

from api.csvcells import Convert, converter, copy_text
from api.errors import MAX_ERRORS, ApiError

SPOOL_MEMORY = 1024 * 1024  # bytes kept in memory before a spooled file goes to disk
PROGRESS_EVERY = 2048  # records between progress reports
FLUSH_EVERY = 1024  # COPY lines buffered before they are written to the spool

Confine = Callable[[dict[str, Any]], None]
Progress = Callable[[int], None]


@dataclass
class Prepared:
    """Validated records as COPY text data (rewound), ready for `COPY table (columns)`."""

    columns: tuple[str, ...]
    count: int
    data: IO[bytes]
    size: int  # bytes of COPY data
    # (record index, its line): where a record does not start on the line after the last one.
    breaks: list[tuple[int, int]] = field(default_factory=list)

    def line_of(self, index: int) -> int:
        """The CSV line (header = 1) where record `index` (0-based) starts."""
        k = bisect.bisect_right(self.breaks, (index, float("inf"))) - 1
        if k < 0:
            return index + 2
        first, line = self.breaks[k]
        return line + index - first

    def close(self) -> None:
        """Remove the temporary COPY data."""
        self.data.close()


def line_error(line: int, column: str | None, message: str) -> dict[str, Any]:
    """One entry of a 422's `errors`."""
    return {"line": line, "field": column, "message": message}


def refusal(errors: list[dict[str, Any]], status: int = 422) -> ApiError:
    """The error for a refused file: its detail names the first error's line and column."""
    first = errors[0]
    where = f"line {first['line']}" + (f", column {first['field']}" if first["field"] else "")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ApiError(status, f"{where}: {first['message']}{more}",
                    line=first["line"], errors=errors[:MAX_ERRORS])  # fmt: skip


def _header(res: Any, at: int, names: list[str]) -> list[str]:
    fields = res.create.model_fields
    header = [n.strip() for n in names]
    errors = []
    for k, name in enumerate(header):
        if name not in fields:
            known = ", ".join(fields)
            errors.append(line_error(at, name or f"#{k + 1}",
                                     f"unknown column; {res.name} takes {known}"))  # fmt: skip
        elif name in header[:k]:
            errors.append(line_error(at, name, "named twice"))
    for name, info in fields.items():
        if info.is_required() and name not in header:
            errors.append(line_error(at, name, "required column is missing from the header"))
    if errors:
        raise refusal(errors)
    return header


def _records(text: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of each non-blank record; 400 for text that is not CSV."""
    reader = csv.reader(text, strict=True)
    last = 0
    try:
        for cells in reader:
            line, last = last + 1, reader.line_num
            if cells:
                yield line, cells
    except csv.Error as exc:
        raise ApiError(400, f"line {last + 1}: malformed CSV: {exc}", line=last + 1) from None
    except UnicodeDecodeError as exc:  # decoded in chunks: the line is not known
        raise ApiError(400, f"the file is not UTF-8 text ({exc.reason})") from None


def _validate(
    res: Any, header: list[str], converters: list[Convert], line: int, cells: list[str],
    confine: Confine | None,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:  # fmt: skip
    """One record's column values, or its errors."""
    if len(cells) != len(header):
        return None, [line_error(line, None, f"{len(cells)} cells, the header has {len(header)}")]
    data: dict[str, Any] = {}
    errors = []
    for name, convert, cell in zip(header, converters, cells, strict=True):
        if cell == "":
            data[name] = None
            continue
        try:
            data[name] = convert(cell)
        except ValueError as exc:
            errors.append(line_error(line, name, str(exc)))
    try:
        body = res.create.model_validate(data)
    except ValidationError as exc:
        reported = {e["field"] for e in errors}
        for e in exc.errors(include_url=False, include_input=False, include_context=False):
            column = str(e["loc"][0]) if e["loc"] else None
            if column in reported:
                continue
            empty = column is not None and data.get(column, "") is None
            message = "an empty cell is null, and this field takes no null" if empty else e["msg"]
            errors.append(line_error(line, column, message))
            reported.add(column)
        return None, errors
    if errors:
        return None, errors
    values: dict[str, Any] = res.columns_of(body)
    if confine is not None:
        try:
            confine(values)
        except ApiError as exc:
            raise ApiError(exc.status, f"line {line}: {exc.detail}", line=line,
                           headers=exc.headers, **exc.members) from None  # fmt: skip
    return values, []


class _CopyData:
    """Rows as COPY text lines, written to a temporary file in batches."""

    def __init__(self) -> None:
        # Handed to the caller in Prepared, which closes it.
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115
        self.columns: tuple[str, ...] | None = None
        self.lines: list[str] = []
        self.size = 0

    def add(self, values: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = tuple(values)
        self.lines.append("\t".join([copy_text(values[c]) for c in self.columns]))
        if len(self.lines) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.size += self.file.write(("\n".join(self.lines) + "\n").encode())
            self.lines.clear()


def prepare(
    res: Any, source: IO[bytes], *, confine: Confine | None = None,
    progress: Progress | None = None,
) -> Prepared:  # fmt: skip
    """Validate every record of the CSV in `source`; the rows as COPY data.

    `res` is a resource (its `name`, `create` model and `columns_of`); `confine`
    checks each record's column values (a branch pin; it raises ApiError);
    `progress` is called with the bytes of `source` read so far. Raises
    ApiError: 400 for bytes that are not UTF-8 CSV, 422 naming line and column
    (up to 50 errors are collected, then reading stops), 403 from `confine`.
    """
    text = io.TextIOWrapper(source, encoding="utf-8-sig", newline="")
    out = _CopyData()
    try:
        records = _records(text)
        first = next(records, None)
        if first is None:
            raise ApiError(400, "the body is empty; send a header line and records")
        header = _header(res, first[0], first[1])
        converters = [converter(res.create.model_fields[n].annotation) for n in header]
        errors: list[dict[str, Any]] = []
        breaks: list[tuple[int, int]] = []
        count = 0
        expected = 2  # record `count`'s line, unless blank or multi-line records came before
        for line, cells in records:
            if line != expected:
                breaks.append((count, line))
            expected = line + 1
            values, bad = _validate(res, header, converters, line, cells, confine)
            count += 1
            errors += bad
            if len(errors) >= MAX_ERRORS:
                break
            if values is not None and not errors:  # once refused, validate but stop writing
                out.add(values)
            if progress is not None and count % PROGRESS_EVERY == 0:
                progress(source.tell())
        if errors:
            raise refusal(errors)
        if out.columns is None:
            raise refusal([line_error(first[0], None, "the file has a header but no records")])
        out.flush()
        if progress is not None:
            progress(source.tell())
    except BaseException:
        out.file.close()
        raise
    finally:
        text.detach()  # the caller owns `source`
    out.file.seek(0)
    return Prepared(out.columns, count, out.file, out.size, breaks)
