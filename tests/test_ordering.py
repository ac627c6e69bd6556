"""The ordering property, tried hard.

Writers on their own connections change a few hot rows and many cold ones in
transactions that take their xids in one order and commit in another (some
held open for seconds, some rolled back, some with rolled-back savepoints).
Two sequencer processes compete for leadership throughout; the leader is
SIGKILLed and restarted, and its connection terminated. The xid counter is
moved so that txids cross a power of ten during the run.

Then: every committed change has exactly one seq, seqs are dense, nothing
rolled back is logged, each row's changes are in log id order, and a replica
built by applying the changes in seq order (checking each UPDATE/DELETE against
the replica's current row) equals every table.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cdc import db
from tests.replica import Replica, table_contents, tracked_pk_columns

pytestmark = pytest.mark.slow

HOT_ROWS = 4
COLD_ROWS = 80
WRITERS = 8
TXNS_PER_WRITER = 45
LONG_TXNS = 3
BURN_LIMIT = 3_000_000  # xids we are willing to burn to reach a power of ten

SETUP = """
CREATE TABLE hot (id int PRIMARY KEY, val int NOT NULL, hist int[] NOT NULL DEFAULT '{}');
CREATE TABLE cold (id int PRIMARY KEY, val int NOT NULL, note text);
CREATE TABLE scratch (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n int NOT NULL);
SELECT pgtide.track_v1('hot'), pgtide.track_v1('cold'), pgtide.track_v1('scratch');
INSERT INTO hot (id, val) SELECT g, 0 FROM generate_series(1, 4) g;
CREATE PROCEDURE burn_xids(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP;
END $$;
"""


class Sequencers:
    """Sequencer processes (`python -m cdc.sequencer`) that can be killed and restarted."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.procs = [self._spawn() for _ in range(count)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "DATABASE_URL": self.url, "PGTIDE_LOG_LEVEL": "WARNING"}
        return subprocess.Popen([sys.executable, "-m", "cdc.sequencer"], env=env)

    def leader_pid(self, conn: psycopg.Connection[Any]) -> tuple[int, int] | None:
        """(OS pid, backend pid) of the process holding the leader lock, if any."""
        row = conn.execute(
            """SELECT a.application_name, a.pid FROM pg_locks l
                 JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted
                  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND a.application_name LIKE 'pgtide-sequencer-%'"""
        ).fetchone()
        if row is None:
            return None
        return int(row[0].rsplit("-", 1)[1]), int(row[1])

    def kill_and_restart(self, os_pid: int) -> None:
        for i, p in enumerate(self.procs):
            if p.pid == os_pid:
                p.send_signal(signal.SIGKILL)
                p.wait()
                self.procs[i] = self._spawn()

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


def burn_to_power_of_ten(conn: psycopg.Connection[Any], ahead: int) -> int | None:
    """Burn xids so that the next power of ten is about `ahead` xids away; return it."""
    current = int(conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    boundary = 10 ** len(str(current))
    need = boundary - current - ahead
    if need > BURN_LIMIT:
        return None
    while need > 0:
        step = min(need, 500_000)
        conn.execute("CALL burn_xids(%s)", (step,))
        need -= step
    return boundary


class Workload:
    """Writers and long transactions; records what was rolled back."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.seed = seed
        self.aborted: set[str] = set()
        self.committed: set[str] = set()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.labels = iter(range(1, 10**9))

    def next_label(self) -> int:
        with self.lock:
            return next(self.labels)

    def writer(self, wid: int) -> None:
        rng = random.Random(self.seed * 1000 + wid)
        try:
            with psycopg.connect(self.url) as conn:
                for _ in range(TXNS_PER_WRITER):
                    self.transaction(conn, rng, self.next_label())
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def transaction(self, conn: psycopg.Connection[Any], rng: random.Random, label: int) -> None:
        tag = str(label)
        try:
            conn.execute("SELECT set_config('pgtide.mutation_id', %s, true)", (tag,))
            if rng.random() < 0.6:
                conn.execute("SELECT pg_current_xact_id()")  # take the xid early...
            time.sleep(rng.uniform(0, 0.008))  # ...and commit late, out of xid order
            for _ in range(rng.randint(1, 3)):
                self.operation(conn, rng, label)
            time.sleep(rng.uniform(0, 0.008))
            if rng.random() < 0.1:
                conn.rollback()
                with self.lock:
                    self.aborted.add(tag)
                return
            conn.commit()
            with self.lock:
                self.committed.add(tag)
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
            conn.rollback()
            with self.lock:
                self.aborted.add(tag)

    def operation(self, conn: psycopg.Connection[Any], rng: random.Random, label: int) -> None:
        r = rng.random()
        if r < 0.45:
            conn.execute(
                "UPDATE hot SET val = val + 1, hist = hist || %s WHERE id = %s",
                (label, rng.randint(1, HOT_ROWS)),
            )
        elif r < 0.75:
            conn.execute(
                """INSERT INTO cold (id, val, note) VALUES (%s, %s, %s)
                   ON CONFLICT (id) DO UPDATE SET val = EXCLUDED.val, note = EXCLUDED.note""",
                (rng.randint(1, COLD_ROWS), label, f"w{label}"),
            )
        elif r < 0.85:
            conn.execute("DELETE FROM cold WHERE id = %s", (rng.randint(1, COLD_ROWS),))
        elif r < 0.95:
            # A rolled-back savepoint: its rows must vanish, the rest of the txn stays.
            conn.execute("SAVEPOINT sp")
            conn.execute("INSERT INTO scratch (n) VALUES (%s)", (-label,))
            conn.execute("ROLLBACK TO SAVEPOINT sp")
            conn.execute("INSERT INTO scratch (n) VALUES (%s)", (label,))
        elif r < 0.98:
            conn.execute("INSERT INTO scratch (n) VALUES (%s)", (label,))
        else:
            conn.execute("TRUNCATE scratch")

    def long_transaction(self, index: int) -> None:
        rng = random.Random(self.seed * 7 + index)
        label = self.next_label()
        try:
            with psycopg.connect(self.url) as conn:
                conn.execute("SELECT set_config('pgtide.mutation_id', %s, true)", (str(label),))
                conn.execute("SELECT pg_current_xact_id()")
                conn.execute(
                    "INSERT INTO cold (id, val, note) VALUES (%s, %s, 'long') "
                    "ON CONFLICT (id) DO UPDATE SET val = EXCLUDED.val, note = 'long'",
                    (COLD_ROWS + 1 + index, label),
                )
                time.sleep(rng.uniform(1.0, 2.5))  # held open while younger ones commit
                conn.commit()
                with self.lock:
                    self.committed.add(str(label))
        except BaseException as exc:
            self.errors.append(exc)


def wait_until_sequenced(url: str, timeout: float) -> None:
    """Block until every logged change has a seq, woken by the sequencer's batch NOTIFY."""
    deadline = time.monotonic() + timeout
    with db.connect(url) as conn:
        conn.execute("LISTEN pgtide_sequenced")
        while True:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM pgtide.sync_log), "
                "(SELECT count(*) FROM pgtide.sync_order)"
            ).fetchone()
            assert row is not None
            if row[0] == row[1]:
                return
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"not sequenced in time: {row[1]} of {row[0]}"
            for _ in conn.notifies(timeout=min(remaining, 1.0), stop_after=1):
                pass


@pytest.fixture
def workload_db(db_url: str) -> Iterator[str]:
    with db.connect(db_url) as conn:
        conn.execute(SETUP.encode())
    yield db_url


def test_every_committed_change_gets_one_dense_seq_in_true_order(workload_db: str) -> None:
    url = workload_db
    admin = db.connect(url)
    boundary = burn_to_power_of_ten(admin, ahead=150)
    start_xid = int(admin.execute("SELECT pg_current_xact_id()::text").fetchone()[0])

    sequencers = Sequencers(url, count=2)
    work = Workload(url, seed=int(os.environ.get("PGTIDE_TEST_SEED", "7")))
    threads = [threading.Thread(target=work.writer, args=(i,)) for i in range(WRITERS)]
    threads += [threading.Thread(target=work.long_transaction, args=(i,)) for i in range(LONG_TXNS)]
    try:
        for t in threads:
            t.start()
        kills = terminations = 0
        action = 0
        # Chaos while the writers run: kill the leader, cut its connection, repeat.
        while any(t.is_alive() for t in threads):
            threads[0].join(timeout=0.6)
            leader = sequencers.leader_pid(admin)
            if leader is None:
                continue
            if action % 2 == 0:
                sequencers.kill_and_restart(leader[0])
                kills += 1
            else:
                admin.execute("SELECT pg_terminate_backend(%s)", (leader[1],))
                terminations += 1
            action += 1
        for t in threads:
            t.join()
        assert not work.errors, work.errors
        wait_until_sequenced(url, timeout=60)
    finally:
        sequencers.stop()

    end_xid = int(admin.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    if boundary is not None:
        assert start_xid < boundary <= end_xid, "txids did not cross a power of ten"
    assert kills >= 1 and terminations >= 1, "the chaos did not happen"
    assert len(work.committed) > 250 and len(work.aborted) > 10

    # Exactly one seq per committed change, dense from 1.
    n_log, n_order, lo, hi, distinct = admin.execute(
        """SELECT (SELECT count(*) FROM pgtide.sync_log), count(*), min(seq), max(seq),
                  count(DISTINCT log_id) FROM pgtide.sync_order"""
    ).fetchone()
    assert n_log == n_order == distinct
    assert (lo, hi) == (1, n_order)

    # Nothing rolled back was logged; rolled-back savepoints left nothing.
    logged_tags = {r[0] for r in admin.execute("SELECT DISTINCT mutation_id FROM pgtide.sync_log")}
    assert not (logged_tags & work.aborted)
    negative = admin.execute(
        "SELECT count(*) FROM pgtide.sync_log "
        "WHERE table_name = 'scratch' AND (new_row->>'n')::int < 0"
    ).fetchone()[0]
    assert negative == 0
    # Every committed writer transaction that changed something is logged.
    assert logged_tags - {None} <= work.committed

    changes = admin.execute(
        """SELECT o.seq, l.id, l.txid::text::bigint, l.table_name, l.op, l.pk,
                  l.new_row, l.old_row
             FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id ORDER BY o.seq"""
    ).fetchall()

    # Each row's changes in log id order (the true order for one row).
    per_key: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for _seq, log_id, txid, table, _op, pk, _new, _old in changes:
        per_key[(table, repr(pk))].append((log_id, txid))
    for key, ids in per_key.items():
        assert ids == sorted(ids), f"{key} out of log id order"
    # The workload really did commit out of xid order on some row: (txid, id) would fail.
    inverted = sum(1 for ids in per_key.values() if ids != sorted(ids, key=lambda x: (x[1], x[0])))
    assert inverted > 0, "workload too gentle: no row had changes out of txid order"

    print(
        f"\nordering run: {n_order} changes, {len(work.committed)} committed, "
        f"{len(work.aborted)} aborted, {kills} kills, {terminations} terminations, "
        f"{inverted} rows out of txid order, xids {start_xid}..{end_xid} (boundary {boundary})"
    )

    # A replica built in seq order equals every table.
    pk_columns = tracked_pk_columns(admin, ["hot", "cold", "scratch"])
    replica = Replica(pk_columns)
    seed_rows = admin.execute(
        "SELECT count(*) FROM pgtide.sync_log WHERE table_name = 'hot' AND op = 'INSERT'"
    ).fetchone()[0]
    assert seed_rows == HOT_ROWS
    for _seq, _id, _txid, table, op, _pk, new, old in changes:
        replica.apply(table, op, new, old)
    for table, cols in pk_columns.items():
        assert replica.tables[table] == table_contents(admin, table, cols), table
    admin.close()
