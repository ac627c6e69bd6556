"""6. API writes.

Single-row creates: 32 concurrent clients (4 processes x 8 threads, keep-alive
http.client connections) POST one `clients` object each, back to back, for a
fixed time. Baseline: the same rows inserted by raw psycopg from 32 threads (4
processes x 8), autocommit, `INSERT … RETURNING *`. Both hit the same tracked
table with `pgtide serve` running, so capture and sequencing cost both alike.

Bulk: one `POST /api/clients` with an array of 10,000 objects (one
transaction); baseline: the same 10,000 rows with psycopg `executemany` in one
transaction.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import psycopg

from bench.common import Ctx, Result, Row, Server, at_least, at_most, median, mp_context, spread

TITLE = "API writes"
RATIO_TARGET = 0.5
BULK_TARGET_S = 1.0
PROCS, THREADS = 4, 8
BULK = 10_000
INSERT = "INSERT INTO clients (branch_id, full_name) VALUES (%s, %s) RETURNING *"


def _http_worker(pipe: Connection, host: str, port: int, branch: str, seconds: float) -> None:
    counts = [0] * THREADS
    errors = [0] * THREADS
    pipe.send("ready")
    start_at = float(pipe.recv())

    def work(j: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Content-Type": "application/json", "X-Pgtide-Actor": "bench"}
        end = start_at + seconds
        time.sleep(max(0.0, start_at - time.monotonic()))
        k = 0
        while time.monotonic() < end:
            body = json.dumps({"branch_id": branch, "full_name": f"http {j} {k}"})
            conn.request("POST", "/api/clients", body, headers)
            r = conn.getresponse()
            r.read()
            if r.status == 201:
                counts[j] += 1
            else:
                errors[j] += 1
            k += 1
        conn.close()

    threads = [threading.Thread(target=work, args=(j,)) for j in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    pipe.send((sum(counts), sum(errors)))


def _sql_worker(pipe: Connection, url: str, branch: str, seconds: float) -> None:
    counts = [0] * THREADS
    conns = [psycopg.connect(url, autocommit=True) for _ in range(THREADS)]
    pipe.send("ready")
    start_at = float(pipe.recv())

    def work(j: int) -> None:
        cur = conns[j].cursor()
        end = start_at + seconds
        time.sleep(max(0.0, start_at - time.monotonic()))
        k = 0
        while time.monotonic() < end:
            cur.execute(INSERT, (branch, f"sql {j} {k}"), prepare=True)
            cur.fetchall()
            counts[j] += 1
            k += 1

    threads = [threading.Thread(target=work, args=(j,)) for j in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for c in conns:
        c.close()
    pipe.send((sum(counts), 0))


def _concurrent(target: Any, args: tuple[Any, ...], seconds: float) -> tuple[float, int]:
    """Writes/s of PROCS processes running `target`, and their errors."""
    ctx = mp_context()
    pipes, procs = [], []
    for _ in range(PROCS):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(child, *args, seconds), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    for pipe in pipes:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("write client did not start")
    start_at = time.monotonic() + 0.3
    for pipe in pipes:
        pipe.send(start_at)
    total, errors = 0, 0
    for pipe in pipes:
        if not pipe.poll(seconds + 120):
            raise RuntimeError("write client did not finish")
        n, e = pipe.recv()
        total += n
        errors += e
    for p in procs:
        p.join(10)
    return total / seconds, errors


def _bulk_http(server: Server, branch: str) -> float:
    rows = [{"branch_id": branch, "full_name": f"bulk {k}"} for k in range(BULK)]
    body = json.dumps(rows, separators=(",", ":"))
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    headers = {"Content-Type": "application/json", "X-Pgtide-Actor": "bench"}
    t0 = time.monotonic()
    conn.request("POST", "/api/clients", body, headers)
    r = conn.getresponse()
    data = r.read()
    took = time.monotonic() - t0
    conn.close()
    if r.status != 201:
        raise RuntimeError(f"bulk create answered {r.status}: {data[:300]!r}")
    return took


def _bulk_sql(url: str, branch: str) -> float:
    with psycopg.connect(url) as conn:
        t0 = time.monotonic()
        with conn.cursor() as cur:
            cur.executemany(
                INSERT, [(branch, f"bulk sql {k}") for k in range(BULK)], returning=True
            )
        conn.commit()
        return time.monotonic() - t0


def run(ctx: Ctx) -> Result:
    res = Result("api", TITLE)
    seconds = 2.0 if ctx.quick else 10.0
    reps = ctx.reps
    res.setup = (
        f"{PROCS * THREADS} concurrent clients ({PROCS} processes x {THREADS} threads), "
        f"{seconds:.0f} s per run, runs interleaved; creates of one `clients` row; bulk: one "
        f"request with {BULK:,} rows; baseline: the same INSERT … RETURNING * by psycopg"
    )
    tid = ctx.task("API writes", reps * 5)
    http_rates: list[float] = []
    sql_rates: list[float] = []
    bulk_http: list[float] = []
    bulk_sql: list[float] = []
    errors = 0
    cpu: list[float] = []  # server CPU ms per create
    two_workers: list[float] = []  # `serve --workers 2`: a deployment on two cores
    with ctx.target.database("api") as url:
        branch = str(uuid.uuid4())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO branches (id, code, name) VALUES (%s, 'BENCH', 'Benchmark')",
                (branch,),
            )
        with Server(url, ctx.logdir, "api") as server:
            for rep in range(reps):
                order = ["http", "sql"] if rep % 2 == 0 else ["sql", "http"]
                for kind in order:
                    ctx.advance(tid, 0, f"API writes: {kind} x 32 (run {rep + 1})")
                    if kind == "http":
                        cpu0 = server.cpu_s()
                        rate, err = _concurrent(
                            _http_worker, (server.host, server.port, branch), seconds
                        )
                        cpu.append((server.cpu_s() - cpu0) * 1000 / max(rate * seconds, 1))
                        http_rates.append(rate)
                        errors += err
                    else:
                        sql_rates.append(_concurrent(_sql_worker, (url, branch), seconds)[0])
                    ctx.advance(tid)
                ctx.advance(tid, 0, f"API writes: bulk {BULK:,} (run {rep + 1})")
                bulk_http.append(_bulk_http(server, branch))
                ctx.advance(tid)
                bulk_sql.append(_bulk_sql(url, branch))
                ctx.advance(tid)
        with Server(url, ctx.logdir, "api-2w", workers=2) as server:
            for rep in range(reps):
                ctx.advance(tid, 0, f"API writes: http x 32, 2 workers (run {rep + 1})")
                rate, err = _concurrent(_http_worker, (server.host, server.port, branch), seconds)
                two_workers.append(rate)
                errors += err
    ctx.done(tid)
    ours, base = median(http_rates), median(sql_rates)
    res.rows.append(
        Row(
            "single-row creates, 32 clients", ours, "writes/s", baseline=base,
            baseline_label="psycopg, 32 threads", target=f"≥ {RATIO_TARGET} x psycopg",
            passed=at_least(ours / base if base else None, RATIO_TARGET),
            spread=spread(http_rates, "{:,.0f}"), baseline_spread=spread(sql_rates, "{:,.0f}"),
            note=f"server CPU {median(cpu):.2f} ms per create"
            + (f"; {errors} non-201 answers" if errors else ""),
        )
    )  # fmt: skip
    two = median(two_workers)
    res.rows.append(
        Row(
            "single-row creates, 32 clients, serve --workers 2", two, "writes/s", baseline=base,
            baseline_label="psycopg, 32 threads", target=f"≥ {RATIO_TARGET} x psycopg",
            passed=at_least(two / base if base else None, RATIO_TARGET),
            spread=spread(two_workers, "{:,.0f}"),
            note="pool of PGTIDE_POOL_SIZE (10) connections per worker",
        )
    )  # fmt: skip
    res.rows.append(
        Row(
            f"bulk create of {BULK:,} rows in one request", median(bulk_http), "s",
            baseline=median(bulk_sql), baseline_label="psycopg executemany",
            target=f"< {BULK_TARGET_S:g} s", passed=at_most(median(bulk_http), BULK_TARGET_S),
            spread=spread(bulk_http, "{:.2f}"), baseline_spread=spread(bulk_sql, "{:.2f}"),
        )
    )  # fmt: skip
    return res
