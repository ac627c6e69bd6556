"""What the fault tests share: the end-of-test marker, SSE subscribers that keep every
change they read, and the check that each received exactly the logged changes of
its filter, once, in seq order, and that replicas built from them equal the tables.

Every fault test ends the same way: a marker message (`pgtide.publish('fin', ...)`,
which every subscriber selects with `topics=fin`) is committed after the writers
stop; each subscriber reads up to it, and what it received is compared with the
`pgtide.sync_order` ⋈ `pgtide.sync_log` rows up to the marker that match its filter.
"""

from __future__ import annotations

import json
import queue
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb

from tests.live import Server, Stream
from tests.replica import Replica, table_contents, tracked_pk_columns

FIN = "fin"  # topic of the marker messages
# Reconnect at once (then 0.1 s, 0.2 s...) so that faults cost little time.
FAST = {"PGTIDE_RECONNECT_BASE_S": "0.05", "PGTIDE_SAFETY_POLL_S": "0.5"}

ALL = f"/events?tables=hot,cold,scratch&topics={FIN}&since=earliest"
LOW_IDS = f"/events?tables=hot,cold&id=lte.10&topics={FIN}&since=earliest"

Event = dict[str, Any]


def is_marker(e: Event) -> bool:
    return e["op"] == "MESSAGE" and e["table"] == FIN


def every(e: Event) -> bool:
    """The filter of ALL, in Python."""
    return is_marker(e) or e["table"] in ("hot", "cold", "scratch")


def low_ids(e: Event) -> bool:
    """The filter of LOW_IDS: a change matches when its new or its old image does."""
    if is_marker(e):
        return True
    if e["table"] not in ("hot", "cold"):
        return False
    return e["op"] == "TRUNCATE" or any(
        img is not None and img["id"] <= 10 for img in (e["row"], e["old"])
    )


class Sub:
    """A subscriber: a real SSE client and every change event it has read, in order."""

    def __init__(self, base: str, path: str, headers: dict[str, str] | None = None) -> None:
        self.path = path
        self.stream = Stream(base, path, headers)
        assert self.stream.status == 200, self.stream.status
        self.got: list[Event] = []

    def _next(self, deadline: float, what: str) -> Any:
        try:
            ev = self.stream.next(max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"{self.path}: nothing in time, waiting for {what}") from None
        assert ev is not None, f"{self.path}: the stream ended while waiting for {what}"
        if ev.event == "message":
            self.got.append(json.loads(ev.data))
        return ev

    def synced(self, timeout: float = 30) -> int:
        """Read (and keep) the catch-up until `synced`; return its cursor."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self._next(deadline, "synced")
            if ev.event == "synced":
                return int(ev.id)

    def marker(self, n: int, timeout: float = 30) -> Event:
        """Read up to the marker message `n` (kept in `got`, returned)."""
        deadline = time.monotonic() + timeout
        while True:
            ev = self._next(deadline, f"marker {n}")
            if ev.event == "message" and is_marker(self.got[-1]) and self.got[-1]["row"]["n"] == n:
                return self.got[-1]

    def count(self, n: int, timeout: float = 30) -> None:
        """Read until at least `n` changes have arrived in all."""
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            self._next(deadline, f"{n} changes")

    def until_cut(self, timeout: float = 30) -> None:
        """Read what is left until the connection ends (the server died)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ev = self.stream.next(max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{self.path}: still open after its server died") from None
            except httpx.HTTPError:
                return  # cut in the middle of the response
            if ev is None:
                return
            if ev.event == "message":
                self.got.append(json.loads(ev.data))

    def close(self) -> None:
        self.stream.close()


def metric(srv: Server, name: str) -> float:
    """One of the server's own figures, from GET /metrics."""
    text = httpx.get(f"{srv.base}/metrics", timeout=5).text
    found = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.M)
    assert found, f"/metrics has no {name}"
    return float(found.group(1))


def publish_marker(conn: psycopg.Connection[Any], n: int) -> None:
    conn.execute("SELECT pgtide.publish(%s, %s)", (FIN, Jsonb({"n": n})))


def logged(conn: psycopg.Connection[Any], upto: int) -> list[Event]:
    """Every sequenced change up to seq `upto`, from the database, shaped like events."""
    rows = conn.execute(
        """SELECT o.seq, l.id, l.txid::text, l.table_name, l.op, l.new_row, l.old_row
             FROM pgtide.sync_order o JOIN pgtide.sync_log l ON l.id = o.log_id
            WHERE o.seq <= %s ORDER BY o.seq""",
        (upto,),
    ).fetchall()
    keys = ("seq", "id", "txid", "table", "op", "row", "old")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def essence(e: Event) -> tuple[Any, ...]:
    return (e["seq"], e["id"], e["txid"], e["table"], e["op"], e["row"], e["old"])


def assert_exactly(got: list[Event], expected: list[Event], what: str) -> None:
    """`got` is `expected`: each change once, in seq order, no gap, same data."""
    seqs = [e["seq"] for e in got]
    repeated = sorted(s for s, n in Counter(seqs).items() if n > 1)
    assert not repeated, f"{what}: {len(repeated)} events repeated, first {repeated[:5]}"
    want = [e["seq"] for e in expected]
    missing = sorted(set(want) - set(seqs))
    extra = sorted(set(seqs) - set(want))
    assert not missing, f"{what}: {len(missing)} changes missing, first {missing[:5]}"
    assert not extra, f"{what}: {len(extra)} unexpected events, first {extra[:5]}"
    assert seqs == want, f"{what}: events out of seq order"
    assert [essence(e) for e in got] == [essence(e) for e in expected], f"{what}: data differs"


def assert_rows_in_true_order(got: list[Event], what: str) -> int:
    """Each row's changes arrive in log id order; return how many rows had changes
    whose transactions committed out of xid order (so that a (txid, id) reader fails)."""
    per_row: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for e in got:
        if e["op"] in ("INSERT", "UPDATE", "DELETE"):
            pk = (e["row"] or e["old"])["id"]
            per_row[(e["table"], str(pk))].append((e["id"], int(e["txid"])))
    for key, ids in per_row.items():
        assert ids == sorted(ids), f"{what}: {key} changes out of order"
    return sum(1 for ids in per_row.values() if ids != sorted(ids, key=lambda x: (x[1], x[0])))


def assert_replica(
    conn: psycopg.Connection[Any],
    got: list[Event],
    tables: list[str],
    keep: Callable[[dict[str, Any]], bool] = lambda row: True,
) -> None:
    """A replica built from the events, from empty, equals the tables' rows that `keep` keeps."""
    pk_columns = tracked_pk_columns(conn, tables)
    replica = Replica(pk_columns)
    for e in got:
        replica.apply(e["table"], e["op"], e["row"], e["old"])
    for table, cols in pk_columns.items():
        rows = {k: v for k, v in table_contents(conn, table, cols).items() if keep(v)}
        assert replica.tables[table] == rows, f"replica of {table} differs"


def check(conn: psycopg.Connection[Any], sub: Sub, flt: Callable[[Event], bool], what: str) -> None:
    """`sub` received exactly the logged changes matching `flt` up to its last marker."""
    upto = sub.got[-1]["seq"]
    assert_exactly(sub.got, [e for e in logged(conn, upto) if flt(e)], what)
