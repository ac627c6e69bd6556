"""The ordering workload: tables `hot`, `cold` and `scratch`, and writers whose
transactions take their xids in one order and commit in another (some held open
for seconds, some rolled back, some with rolled-back savepoints).

tests/test_ordering.py runs it against competing sequencers; the stream fault tests
and the gateway tests run it under their faults.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

HOT_ROWS = 4
COLD_ROWS = 80
TXNS_PER_WRITER = 45

# The tables (tracked), and `burn_xids(n)` to move the xid counter.
WORKLOAD_SETUP = """
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


@dataclass
class Writers:
    """Writer threads running the ordering test's transactions until stopped.

    They live through a database outage: a transaction cut by it is not
    retried (it may or may not have committed; the tests compare the stream
    with `pgtide.sync_log`, not with what the writers attempted).
    """

    work: Workload
    count: int
    first: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(self.first + i,)) for i in range(self.count)
        ]
        for t in self.threads:
            t.start()

    def _run(self, wid: int) -> None:
        rng = random.Random(self.work.seed * 1000 + wid)
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self.stopping.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.work.url, connect_timeout=2)
                    self.work.transaction(conn, rng, self.work.next_label())
                except psycopg.OperationalError:
                    self.failures += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    self.stopping.wait(0.05)  # the database is down: try again shortly
        except BaseException as exc:
            self.work.errors.append(exc)
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()
        assert not self.work.errors, self.work.errors
