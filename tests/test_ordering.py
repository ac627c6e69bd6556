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
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from typing import Any

import psycopg
import pytest

from cdc import db
from tests.replica import Replica, table_contents, tracked_pk_columns
from tests.sequencing import wait_until_sequenced
from tests.workload import HOT_ROWS, Workload

pytestmark = pytest.mark.slow

WRITERS = 8
LONG_TXNS = 3
BURN_LIMIT = 3_000_000  # xids we are willing to burn to reach a power of ten


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
