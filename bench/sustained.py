"""7. Sustained end to end (thorough mode only).

60 s of mixed writes at fixed rates: SQL writers (single-row INSERT, UPDATE
and DELETE, and 5-row INSERT transactions) on a tracked table, and API
creates over HTTP (`POST /api/clients`), while 200 SSE subscribers follow:
150 unfiltered, 50 with `tables=b_mix&grp=lt.500`. Afterwards every
subscriber's received seqs are checked against the log: for each one, the
changes its filter selects with seq above its `synced` cursor, up to the end,
must each have arrived exactly once. Latency is keyed by txid (the SQL writes
return pg_current_xact_id(), the API returns it in its envelope). Server RSS
at the start and the end.

Baseline: a NOTIFY-per-transaction table written at 20/s during the same
60 s, received by one bare LISTEN client.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import psycopg

from bench.common import Ctx, Result, Row, Server, pct, wait_sequenced
from bench.load import HttpRateWriters, Listeners, RateWriters, create_table
from bench.sse import SEQS, Subscribers

TITLE = "Sustained end to end"
SEED = 5000
TXID = "pg_current_xact_id()::text::bigint"
STATEMENTS = [
    f"INSERT INTO b_mix (grp, v, note) VALUES (%s::int %% 1000, 1, 'mix') RETURNING {TXID}",
    f"UPDATE b_mix SET v = v + 1, note = 'upd' WHERE id = %s::int %% {SEED} + 1 RETURNING {TXID}",
    f"INSERT INTO b_mix (grp, v, note) VALUES (%s::int %% 1000, 2, 'mix') RETURNING {TXID}",
    f"UPDATE b_mix SET grp = (grp + 500) %% 1000 WHERE id = (%s::int * 7) %% {SEED} + 1 "
    f"RETURNING {TXID}",
    f"INSERT INTO b_mix (grp, v, note) SELECT (%s::int + g) %% 1000, g, 'batch' "
    f"FROM generate_series(1, 5) g RETURNING {TXID}",
    f"DELETE FROM b_mix WHERE id = (SELECT id FROM b_mix WHERE id > {SEED} + %s::int %% 50 "
    f"ORDER BY id LIMIT 1) RETURNING {TXID}",
]
NAIVE = "INSERT INTO b_naive (v, note) VALUES (%s, 'naive') RETURNING id"


def run(ctx: Ctx) -> Result:
    res = Result("sustained", TITLE)
    seconds = 15.0 if ctx.quick else 60.0  # quick only with --only sustained
    sql_rate, api_rate, naive_rate = 200.0, 20.0, 20.0
    n_plain, n_filtered = 150, 50
    res.setup = (
        f"{seconds:.0f} s: SQL writes at {sql_rate:.0f} tx/s (INSERT, UPDATE incl. moving rows "
        f"across the filter, DELETE, 5-row INSERT) + API creates at {api_rate:.0f}/s; "
        f"{n_plain} unfiltered subscribers + {n_filtered} with `grp=lt.500`; baseline: a "
        f"NOTIFY-per-transaction table at {naive_rate:.0f}/s, one LISTEN client"
    )
    tid = ctx.task("sustained: 60 s of mixed writes", 4)
    with ctx.target.database("sustained") as url:
        branch = str(uuid.uuid4())
        with psycopg.connect(url, autocommit=True) as conn:
            create_table(conn, "b_mix", "tracked", SEED)
            create_table(conn, "b_naive", "naive")
            conn.execute(
                "INSERT INTO branches (id, code, name) VALUES (%s, 'BENCH', 'Benchmark')",
                (branch,),
            )
        with Server(url, ctx.logdir, "sustained") as server:
            paths = ["/events"] * n_plain + ["/events?tables=b_mix&grp=lt.500"] * n_filtered
            with Subscribers(server.host, server.port, paths, 2, SEQS, record=len(paths)) as sse:
                if sse.ready < len(paths):
                    raise RuntimeError(f"only {sse.ready} subscribers connected: {sse.failures}")
                rss_start = server.rss_mib()
                cpu0 = server.cpu_s()
                ctx.advance(tid, 1, "sustained: writing")
                listeners = Listeners(url, 1).start()
                sql = RateWriters(url, STATEMENTS, sql_rate, seconds, 1).start()
                api = HttpRateWriters(
                    server.host, server.port, "/api/clients",
                    f'{{"branch_id": "{branch}", "full_name": "sustained {{i}}"}}',
                    api_rate, seconds,
                ).start(sql.start_at)  # fmt: skip
                naive = RateWriters(url, NAIVE, naive_rate, seconds, 1).start()
                commits, sql_achieved = sql.join()
                api_commits = api.join()
                naive_commits, _ = naive.join()
                commits.update(api_commits)
                cpu = (server.cpu_s() - cpu0) / seconds
                ctx.advance(tid, 1, "sustained: draining")
                wait_sequenced(url, 120)
                head = server.head()
                sse.wait_each(0, timeout=1)
                _drain(sse, head)
                rss_end = server.rss_mib()
                out = sse.stop()
                naive_got = listeners.stop()
            ctx.advance(tid, 1, "sustained: checking")
            check = _check(url, paths, out, commits)
    ctx.advance(tid)
    ctx.done(tid)
    base = [
        (t - naive_commits[i]) * 1000
        for ids, times in naive_got
        for i, t in zip(ids, times, strict=True)
        if i in naive_commits
    ]
    res.rows += [
        Row("lost events (all subscribers)", check["lost"], "count", target="= 0",
            passed=check["lost"] == 0, note=f"{check['expected']:,} deliveries expected"),
        Row("duplicated events", check["dups"], "count", target="= 0", passed=check["dups"] == 0),
        Row("unexpected events (outside the filter)", check["extra"], "count", target="= 0",
            passed=check["extra"] == 0),
        Row("latency p50", pct(check["lat"], 50), "ms", baseline=pct(base, 50),
            baseline_label="LISTEN"),
        Row("latency p99", pct(check["lat"], 99), "ms", baseline=pct(base, 99),
            baseline_label="LISTEN",
            note=f"max {max(check['lat'], default=float('nan')):.1f} ms; "
            f"SQL {sql_achieved:.0f} tx/s, API {len(api_commits) / seconds:.0f}/s achieved; "
            f"server CPU {cpu:.0%}"
            + (f", {api.errors} API errors" if api.errors else "")),
        Row("server RSS start → end", rss_end, "MiB", baseline=rss_start,
            baseline_label="at start"),
    ]  # fmt: skip
    if check["cut"]:
        res.notes.append(f"{check['cut']} streams were cut by the server (too far behind)")
    return res


def _drain(sse: Subscribers, head: int) -> None:
    """Wait until the unfiltered subscribers have everything up to `head` (or nothing moves)."""
    last, moved = -1, time.monotonic()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = sse.status()
        if st["total"] == last and time.monotonic() - moved > 3:
            return
        if st["total"] != last:
            last, moved = st["total"], time.monotonic()
        time.sleep(0.2)
    _ = head


def _check(
    url: str, paths: list[str], out: dict[str, Any], commits: dict[int, float]
) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT o.seq, l.table_name, l.txid::text::bigint, "
            "(l.new_row->>'grp')::int, (l.old_row->>'grp')::int, l.op "
            "FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id ORDER BY o.seq"
        ).fetchall()
    head = rows[-1][0] if rows else 0
    txid_of = {seq: txid for seq, _, txid, _, _, _ in rows}
    selected = {
        seq
        for seq, table, _, new, old, op in rows
        if table == "b_mix"
        and op != "TRUNCATE"
        and ((new is not None and new < 500) or (old is not None and old < 500))
    }
    lost = dups = extra = expected = cut = 0
    lat: list[float] = []
    records = out["records"]
    for k, (sub, (firsts, lasts, stamps)) in enumerate(zip(out["subs"], records, strict=True)):
        seqs = [s for f, last in zip(firsts, lasts, strict=True) for s in range(f, last + 1)]
        times = [
            t for f, last, t in zip(firsts, lasts, stamps, strict=True) for _ in range(f, last + 1)
        ]
        filtered = "grp=" in paths[_index(k, len(paths))]
        start = sub["synced"] or 0
        want = {s for s in range(start + 1, head + 1) if not filtered or s in selected}
        got = Counter(seqs)
        expected += len(want)
        lost += len(want - got.keys())
        dups += sum(n - 1 for n in got.values() if n > 1)
        extra += len(got.keys() - want)
        cut += bool(sub["ended"] or sub["lost"])
        for s, t in zip(seqs, times, strict=True):
            c = commits.get(txid_of.get(s, -1))
            if c is not None:
                lat.append((t - c) * 1000)
    return {"lost": lost, "dups": dups, "extra": extra, "expected": expected, "lat": lat,
            "cut": cut}  # fmt: skip


def _index(k: int, n: int, procs: int = 2) -> int:
    """Subscribers report per process (process p got paths[p::procs]): back to path order."""
    per = [len(range(p, n, procs)) for p in range(procs)]
    p = 0
    while k >= per[p]:
        k -= per[p]
        p += 1
    return p + k * procs
