"""CSV import.

One `POST /api/clients` with `Content-Type: text/csv` carrying 100,000 clients
(branch_id, full_name, email), timed from the first byte sent to the 201: the
upload, the validation of every record by the model, and the COPY into the
tracked table in one transaction. Baseline: `COPY clients (…) FROM STDIN
(FORMAT csv, HEADER)` of the same file by psycopg, in one transaction, into
the same tracked table with the same `pgtide serve` running, so capture
(one pgtide.sync_log row per record) and sequencing cost both alike. Runs alternate
and each starts once the sequencer has caught up with the previous one.
"""

from __future__ import annotations

import http.client
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from bench.common import Ctx, Result, Row, Server, at_most, median, spread, wait_sequenced

TITLE = "CSV import"
ROWS = 100_000
RATIO_TARGET = 3.0
COLUMNS = "branch_id,full_name,email"
BASELINE = "COPY clients (branch_id, full_name, email) FROM STDIN (FORMAT csv, HEADER)"


def _write_file(path: Path, branch: str, run: int) -> int:
    """The CSV of ROWS clients (emails unique per run); its size in bytes."""
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(COLUMNS + "\n")
        for k in range(ROWS):
            f.write(f'{branch},"Client {run}-{k}, Example",c{run}-{k}@example.com\n')
    return path.stat().st_size


def _http(server: Server, path: Path) -> float:
    body = path.read_bytes()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    headers = {"Content-Type": "text/csv; charset=utf-8", "X-Pgtide-Actor": "bench"}
    t0 = time.monotonic()
    conn.request("POST", "/api/clients", body, headers)
    r = conn.getresponse()
    data = r.read()
    took = time.monotonic() - t0
    conn.close()
    if r.status != 201:
        raise RuntimeError(f"CSV import answered {r.status}: {data[:300]!r}")
    return took


def _copy(url: str, path: Path) -> float:
    with psycopg.connect(url) as conn:
        t0 = time.monotonic()
        with (
            conn.cursor() as cur,
            cur.copy(BASELINE) as copy,
            path.open("rb") as f,
        ):
            while chunk := f.read(256 * 1024):
                copy.write(chunk)
        conn.commit()
        return time.monotonic() - t0


def run(ctx: Ctx) -> Result:
    res = Result("csvimport", TITLE)
    reps = ctx.reps
    ours: list[float] = []
    base: list[float] = []
    tid = ctx.task("CSV import", reps * 2)
    workdir = Path(tempfile.mkdtemp(prefix="pgtide-bench-csv-"))
    size = 0
    with ctx.target.database("csvimport") as url:
        branch = str(uuid.uuid4())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO branches (id, code, name) VALUES (%s, 'BENCH', 'Benchmark')",
                (branch,),
            )
        with Server(url, ctx.logdir, "csvimport") as server:
            run_no = 0
            for rep in range(reps):
                order = ["http", "copy"] if rep % 2 == 0 else ["copy", "http"]
                for kind in order:
                    run_no += 1
                    ctx.advance(tid, 0, f"CSV import: {kind}, {ROWS:,} rows (run {rep + 1})")
                    path = workdir / f"clients-{run_no}.csv"
                    size = _write_file(path, branch, run_no)
                    if not wait_sequenced(url):
                        raise RuntimeError("the sequencer did not catch up between runs")
                    if kind == "http":
                        ours.append(_http(server, path))
                    else:
                        base.append(_copy(url, path))
                    path.unlink()
                    ctx.advance(tid)
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM clients").fetchone()
            if row is None or row[0] != ROWS * 2 * reps:
                raise RuntimeError(f"expected {ROWS * 2 * reps} clients, found {row}")
    workdir.rmdir()
    ctx.done(tid)
    ours_s, base_s = median(ours), median(base)
    res.setup = (
        f"{ROWS:,} clients ({size / 2**20:.1f} MiB of CSV) in one request, from the first "
        "byte sent to the 201; baseline: COPY … FROM STDIN (FORMAT csv) of the same file by "
        "psycopg into the same tracked table, one transaction; runs alternate, each after "
        "the sequencer caught up"
    )
    res.rows.append(
        Row(
            f"import of {ROWS:,} rows (text/csv)", ours_s, "s", baseline=base_s,
            baseline_label="COPY FROM STDIN (csv)", target=f"≤ {RATIO_TARGET:g} x COPY",
            passed=at_most(ours_s / base_s if base_s else None, RATIO_TARGET),
            spread=spread(ours, "{:.2f}"), baseline_spread=spread(base, "{:.2f}"),
            note=f"{ROWS / ours_s:,.0f} rows/s against {ROWS / base_s:,.0f} rows/s",
        )
    )  # fmt: skip
    return res
