"""4. Catch-up.

N changes are logged with INSERT ... SELECT into a tracked table in a few big
transactions, and `pgtide serve` sequences them. Then a client resumes from
cursor 0 (`Last-Event-ID: 0`) and reads until the `synced` event: events/s
over HTTP. Baseline: the same changes read with psycopg by the raw keyset
SELECT in seq order (cdc/queries.sql `read_after`, pages of 1,000, like the
stream). A third row reads them with the JSON built by PostgreSQL instead of
Python (a measured proposal, not what the stream does).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from bench.common import Ctx, Result, Row, Server, at_least, median, spread, wait_sequenced
from bench.load import create_table
from bench.sse import COUNT, Subscribers
from cdc.queries import queries

TITLE = "Catch-up from cursor 0"
TARGET = 200_000
PAGE = 1000

# The proposal: PostgreSQL builds each event's JSON text, Python only frames it.
SQL_JSON = """
SELECT o.seq, json_build_object(
    'cursor', o.seq::text, 'seq', o.seq, 'txid', l.txid::text, 'id', l.id, 'at', l.at,
    'schema', l.schema_name, 'table', l.table_name, 'op', l.op, 'pk', l.pk, 'row', l.new_row,
    'old', l.old_row, 'changed', l.changed, 'actor', l.actor, 'origin', l.origin,
    'mutation_id', l.mutation_id)::text
  FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id
 WHERE o.seq > %(after)s ORDER BY o.seq LIMIT %(limit)s
"""


# The scan alone: the same keyset walk, rows not decoded (jsonb travels as text).
SCAN_ONLY = """
SELECT o.seq, l.id, l.txid::text, l.at::text, l.table_name, l.op, l.pk::text, l.new_row::text,
       l.old_row::text
  FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id
 WHERE o.seq > %(after)s ORDER BY o.seq LIMIT %(limit)s
"""


def generate(url: str, total: int, txs: int) -> float:
    t0 = time.monotonic()
    per = total // txs
    with psycopg.connect(url, autocommit=True) as conn:
        for k in range(txs):
            conn.execute(
                "INSERT INTO b_log (grp, v, note) SELECT g %% 1000, g, 'catch-up row ' || g "
                "FROM generate_series(%s::int, %s::int) g",
                (k * per + 1, (k + 1) * per),
            )
    return time.monotonic() - t0


def keyset(url: str, total: int, query: str, frame: bool) -> float:
    """Events/s reading every change after cursor 0 page by page."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        after, n = 0, 0
        t0 = time.monotonic()
        while True:
            cur.execute(query, {"after": after, "limit": PAGE}, prepare=True)
            rows = cur.fetchall()
            if not rows:
                break
            if frame:
                b"".join(f"id: {s}\ndata: {j}\n\n".encode() for s, j in rows)
            n += len(rows)
            after = rows[-1][0]
        elapsed = time.monotonic() - t0
    assert n >= total, (n, total)
    return n / elapsed


def over_http(server: Server, total: int) -> dict[str, Any]:
    t0 = time.monotonic()
    cpu0 = server.cpu_s()
    with Subscribers(
        server.host, server.port, ["/events?tables=b_log"], 1, COUNT,
        headers={"Last-Event-ID": "0"}, connect_timeout=600,
    ) as sse:  # fmt: skip
        out = sse.stop()
    sub = out["subs"][0]
    if sub["synced"] is None or sub["count"] < total:
        raise RuntimeError(f"catch-up incomplete: {sub}")
    elapsed = sub["synced_t"] - t0
    return {
        "rate": sub["count"] / elapsed,
        "cpu_us": (server.cpu_s() - cpu0) * 1e6 / sub["count"],
        "rss": server.rss_mib(),
    }


def run(ctx: Ctx) -> Result:
    res = Result("catchup", TITLE)
    total = 30_000 if ctx.quick else 1_000_000
    txs = 4 if ctx.quick else 10
    reps = min(ctx.reps, 2)  # reading 1,000,000 events over HTTP takes minutes here
    res.setup = (
        f"{total:,} changes (INSERT … SELECT, {txs} transactions) into a tracked table; one SSE "
        "client with Last-Event-ID: 0 reading until `synced`; baseline: psycopg keyset "
        f"SELECT of `read_after` in pages of {PAGE:,}"
    )
    tid = ctx.task("catch-up", 2 + reps * 3)
    with ctx.target.database("catchup") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            create_table(conn, "b_log", "tracked")
        with Server(url, ctx.logdir, "catchup") as server:
            ctx.advance(tid, 0, f"catch-up: logging {total:,} changes")
            gen_s = generate(url, total, txs)
            ctx.advance(tid, 1, "catch-up: sequencing")
            t0 = time.monotonic()
            rss_before = server.rss_mib()
            if not wait_sequenced(url, 1800):
                raise RuntimeError("the sequencer did not finish")
            seq_s = time.monotonic() - t0
            rss_after_seq = server.rss_mib()
            ctx.advance(tid)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE pgtide.sync_log")
                conn.execute("VACUUM ANALYZE pgtide.sync_order")
            http: list[dict[str, Any]] = []
            raw: list[float] = []
            sqljson: list[float] = []
            scan: list[float] = []
            for rep in range(reps):
                ctx.advance(tid, 0, f"catch-up: over HTTP (run {rep + 1})")
                http.append(over_http(server, total))
                ctx.advance(tid, 1, f"catch-up: psycopg keyset (run {rep + 1})")
                raw.append(keyset(url, total, queries["read_after"], False))
                ctx.advance(tid, 1, f"catch-up: SQL-built JSON (run {rep + 1})")
                sqljson.append(keyset(url, total, SQL_JSON, True))
                ctx.advance(tid, 0, f"catch-up: keyset scan, rows not decoded (run {rep + 1})")
                scan.append(keyset(url, total, SCAN_ONLY, False))
                ctx.advance(tid)
    ctx.done(tid)
    rates = [h["rate"] for h in http]
    ours = median(rates)
    base = median(raw)
    res.rows.append(
        Row(
            "events/s over HTTP from cursor 0", ours, "events/s", baseline=base,
            baseline_label="psycopg keyset", target=f"≥ {TARGET:,}/s",
            passed=at_least(ours, TARGET), spread=spread(rates, "{:,.0f}"),
            baseline_spread=spread(raw, "{:,.0f}"),
            note=f"server CPU {median([h['cpu_us'] for h in http]):.1f} µs/event",
        )
    )  # fmt: skip
    res.rows.append(
        Row(
            "keyset SELECT with JSON built by PostgreSQL (proposal)", median(sqljson),
            "events/s", baseline=base, baseline_label="psycopg keyset",
            spread=spread(sqljson, "{:,.0f}"),
            note="what the stream could reach if PostgreSQL built the event JSON",
        )
    )  # fmt: skip
    res.rows.append(
        Row(
            "keyset scan alone, rows not decoded (reference)", median(scan), "events/s",
            baseline=base, baseline_label="psycopg keyset", spread=spread(scan, "{:,.0f}"),
            note="jsonb and timestamps as text: the database side of the walk",
        )
    )  # fmt: skip
    res.rows.append(
        Row(
            "logging + sequencing the backlog", total / (gen_s + seq_s), "events/s",
            note=f"INSERT … SELECT took {gen_s:.1f} s, the sequencer finished {seq_s:.1f} s "
            f"later; server RSS {rss_before:.0f} → {rss_after_seq:.0f} MiB",
        )
    )  # fmt: skip
    return res
