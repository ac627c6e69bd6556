"""Rendering results: rich tables for the terminal, JSON, and docs/benchmarks.md.

docs/benchmarks.md keeps its hand-written analysis: only the part between the
`<!-- results:start -->` and `<!-- results:end -->` markers is regenerated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.common import Result, Row

START, END = "<!-- results:start -->", "<!-- results:end -->"


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit in ("ms",):
        return f"{value:.2f} ms" if value < 100 else f"{value:,.0f} ms"
    if unit == "writes/s":
        return f"{value:,.0f}/s"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    if unit == "count":
        return f"{value:,.0f}"
    if unit == "KiB":
        return f"{value:,.1f} KiB"
    if unit == "µs":
        return f"{value:,.0f} µs"
    if unit == "CPU ms":
        return f"{value:,.2f} {unit}"
    return f"{value:,.0f} {unit}"


def ratio_text(row: Row) -> str:
    r = row.ratio
    return "—" if r is None else f"{r:.2f}x"


def verdict(row: Row) -> str:
    if row.passed is None:
        return ""
    return "pass" if row.passed else "MISS"


def rich_table(res: Result) -> Table:
    table = Table(title=f"{res.title}", title_justify="left", show_lines=False)
    for col, kw in (
        ("metric", {}), ("ours", {"justify": "right"}), ("baseline", {"justify": "right"}),
        ("ratio", {"justify": "right"}), ("target", {}), ("result", {}), ("notes", {}),
    ):  # fmt: skip
        table.add_column(col, **kw)
    for row in res.rows:
        v = verdict(row)
        style = {"pass": "green", "MISS": "bold red"}.get(v, "")
        base = fmt(row.baseline, row.unit)
        if row.baseline_label and row.baseline is not None:
            base = f"{base} ({row.baseline_label})"
        notes = "; ".join(x for x in (row.spread and f"spread {row.spread}", row.note) if x)
        table.add_row(
            row.metric, fmt(row.ours, row.unit), base, ratio_text(row), row.target,
            f"[{style}]{v}[/]" if style else v, notes,
        )  # fmt: skip
    return table


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(meta: dict[str, Any], results: list[Result]) -> str:
    lines = [
        f"Run: {meta['date']} · mode **{meta['mode']}** · {meta['postgres']} "
        f"({meta['target']}) · {meta['machine']}",
        "",
        f"Command: `{meta['command']}` · total {meta['seconds']:.0f} s",
        "",
    ]
    for rerun in meta.get("reruns", []):
        lines += [
            f"Re-run since: {', '.join(rerun['benchmarks'])} on {rerun['date']} "
            f"(`{rerun['command']}`, {rerun['mode']} mode).",
            "",
        ]
    lines += [
        "### Summary",
        "",
        "| benchmark | metric | ours | baseline | ratio | target | result |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for res in results:
        if res.skipped:
            lines.append(f"| {res.title} | skipped: {_md_escape(res.skipped)} | | | | | |")
            continue
        for row in res.rows:
            if not row.target:
                continue
            lines.append(
                f"| {res.title} | {_md_escape(row.metric)} | {fmt(row.ours, row.unit)} | "
                f"{fmt(row.baseline, row.unit)} | {ratio_text(row)} | "
                f"{_md_escape(row.target)} | {verdict(row) or '—'} |"
            )
    for res in results:
        lines += ["", f"### {res.title}", ""]
        if res.skipped:
            lines += [f"Skipped: {res.skipped}", ""]
            continue
        if res.setup:
            lines += [f"Setup: {res.setup}", ""]
        lines += [
            "| metric | ours | baseline | ratio | target | result | spread (ours / baseline) "
            "| notes |",
            "| --- | ---: | ---: | ---: | --- | --- | --- | --- |",
        ]
        for row in res.rows:
            base = fmt(row.baseline, row.unit)
            if row.baseline_label and row.baseline is not None:
                base += f" ({row.baseline_label})"
            spreads = " / ".join(x for x in (row.spread, row.baseline_spread) if x)
            lines.append(
                f"| {_md_escape(row.metric)} | {fmt(row.ours, row.unit)} | {_md_escape(base)} | "
                f"{ratio_text(row)} | {_md_escape(row.target)} | {verdict(row)} | "
                f"{_md_escape(spreads)} | {_md_escape(row.note)} |"
            )
        for note in res.notes:
            lines += ["", f"- {note}"]
        lines.append("")
    return "\n".join(lines)


def write_markdown(path: Path, meta: dict[str, Any], results: list[Result]) -> None:
    body = markdown(meta, results)
    block = f"{START}\n{body}\n{END}"
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if START in text and END in text:
            head, rest = text.split(START, 1)
            tail = rest.split(END, 1)[1]
            path.write_text(head + block + tail, encoding="utf-8")
            return
    path.write_text(
        "# Benchmarks\n\nGenerated by `python -m bench`; the analysis below the results "
        f"is written by hand.\n\n## Results\n\n{block}\n",
        encoding="utf-8",
    )


def write_json(path: Path, meta: dict[str, Any], results: list[Result]) -> None:
    data = {"meta": meta, "benchmarks": [r.to_json() for r in results]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def main() -> None:
    """`python -m bench.report [results.json] [benchmarks.md]`: rewrite the Markdown from JSON."""
    import sys

    from bench.common import REPO, Result

    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results.json"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "docs" / "benchmarks.md"
    data = json.loads(src.read_text(encoding="utf-8"))
    write_markdown(dst, data["meta"], [Result.from_json(b) for b in data["benchmarks"]])


if __name__ == "__main__":
    main()
