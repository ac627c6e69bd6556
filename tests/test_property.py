"""Property: whatever mix of writes and subscriber behaviour, every subscriber gets the log.

Hypothesis generates a list of steps, run against ONE fresh database and ONE real
`pgtide serve` per example: API writes (POST, PATCH with a current or stale
If-Match, moves between branches, DELETE), bulk array POSTs (some poisoned with a
duplicate key, so the whole array aborts), SQL transactions (committed, rolled
back, or with a rolled-back savepoint), offline pushes that resend earlier
mutation ids, and subscribers that connect (from the start or from now, with
filters), drop, resume with Last-Event-ID and read at random points.

Then a marker is published and every subscriber reads up to it. Invariants:
- each subscriber's events, concatenated over its connections, are exactly the
  `pgtide.sync_order` ⋈ `pgtide.sync_log` rows matching its filter from where it started, in
  seq order, each once, with the same data;
- a replica built from the unfiltered subscriber's events equals the tables, and
  the branch-filtered one's equals that branch's rows;
- no response is a 5xx; a resent mutation id that was applied is `duplicate` and
  its changes are logged by one transaction only; aborted writes leave nothing.

Reproducible: `derandomize=True`, no example database; PGTIDE_PROPERTY_EXAMPLES
raises the number of examples for a longer local run.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc import db
from tests.conftest import drop_database, with_dbname
from tests.faults import FAST, FIN, Event, assert_exactly, logged, publish_marker
from tests.live import Server, Stream
from tests.replica import Replica, key_of, table_contents, tracked_pk_columns

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("PGTIDE_PROPERTY_EXAMPLES", "8"))
TABLES = ["branches", "clients", "products"]
BRANCH = {"A": "0000000a-0000-4000-8000-00000000000a", "B": "0000000b-0000-4000-8000-00000000000b"}


def row_id(kind: int, n: int) -> str:
    """Deterministic ids, so that an example replays the same way (kind 1: clients, 2:
    products)."""
    return f"0000000{kind}-0000-4000-8000-{n:012x}"


def is_marker(e: Event) -> bool:
    return e["op"] == "MESSAGE" and e["table"] == FIN


def in_branch(e: Event, branch: str) -> bool:
    return any(img is not None and img.get("branch_id") == branch for img in (e["row"], e["old"]))


@dataclass(frozen=True)
class Filter:
    name: str
    query: str
    match: Callable[[Event], bool]


FILTERS = [
    Filter("all", f"tables=branches,clients,products&topics={FIN}",
           lambda e: is_marker(e) or e["table"] in TABLES),
    Filter("branch A", f"tables=clients,products&branch_id=eq.{BRANCH['A']}&topics={FIN}",
           lambda e: is_marker(e) or (e["table"] in ("clients", "products")
                                       and in_branch(e, BRANCH["A"]))),
    Filter("client inserts and deletes", f"tables=clients&ops=insert,delete&topics={FIN}",
           lambda e: is_marker(e) or (e["table"] == "clients"
                                       and e["op"] in ("INSERT", "DELETE"))),
]  # fmt: skip


@dataclass
class Subscriber:
    """One client: its filter, where it started, and everything it read over its connections."""

    base: str
    flt: Filter
    since_now: bool
    got: list[Event] = field(default_factory=list)
    start: int = 0  # the seq after which its events begin
    last_id: str | None = None
    stream: Stream | None = None
    connections: int = 0

    def connect(self) -> None:
        assert self.stream is None
        self.connections += 1
        if self.last_id is None:
            since = "now" if self.since_now else "earliest"
            self.stream = Stream(self.base, f"/events?{self.flt.query}&since={since}")
        else:
            headers = {"Last-Event-ID": self.last_id}
            self.stream = Stream(self.base, f"/events?{self.flt.query}", headers)
        assert self.stream.status == 200, self.stream.status
        synced = self._read_until(lambda ev: ev.event == "synced", timeout=10)
        if self.connections == 1:
            self.start = 0 if not self.since_now else int(synced)

    def _take(self, timeout: float | None) -> Any:
        assert self.stream is not None
        try:
            ev = self.stream.next(timeout) if timeout is not None else self._now()
        except queue.Empty:
            return None
        assert ev is not None, f"{self.flt.name}: the server ended the stream"
        if ev.id:
            self.last_id = ev.id
        if ev.event == "message":
            self.got.append(json.loads(ev.data))
        return ev

    def _now(self) -> Any:
        assert self.stream is not None
        item = self.stream.events.get_nowait()
        if isinstance(item, BaseException):
            raise item
        return item

    def _read_until(self, done: Callable[[Any], bool], timeout: float) -> str:
        while True:
            ev = self._take(timeout)
            assert ev is not None, f"{self.flt.name}: nothing within {timeout}s"
            if done(ev):
                return str(ev.id)

    def read(self) -> None:
        """Everything that has arrived, without waiting."""
        while self.stream is not None and self._take(None) is not None:
            pass

    def drop(self) -> None:
        """Read what has arrived, then cut the connection (what is in flight is lost)."""
        self.read()
        assert self.stream is not None
        self.stream.close()
        self.stream = None

    def finish(self, marker: int) -> None:
        def arrived(ev: Any = None) -> bool:
            return bool(self.got) and is_marker(self.got[-1]) and self.got[-1]["row"]["n"] == marker

        if self.stream is None:
            self.connect()  # its catch-up may bring the marker already
        if not arrived():
            self._read_until(arrived, timeout=20)
        assert self.stream is not None
        self.stream.close()
        self.stream = None


# Steps -----------------------------------------------------------------------

branch_key = st.sampled_from(["A", "B"])
index = st.integers(0, 50)
sql_op = st.one_of(
    st.tuples(st.just("ins"), branch_key),
    st.tuples(st.just("upd"), index),
    st.tuples(st.just("del"), index),
    st.tuples(st.just("move"), index, branch_key),
    st.tuples(st.just("prod_ins"), branch_key),
    st.tuples(st.just("prod_upd"), index),
    st.tuples(st.just("prod_del"), index),
)
push_op = st.one_of(
    st.tuples(st.just("insert"), branch_key),
    st.tuples(st.just("update"), index, st.booleans()),  # (index, stale base_version)
    st.tuples(st.just("delete"), index, st.booleans()),
)
burst_op = st.one_of(
    st.tuples(st.just("patch"), index),
    st.tuples(st.just("sql_upd"), index),
    st.tuples(st.just("create"), branch_key),
    st.tuples(st.just("delete"), index),
    st.tuples(st.just("move"), index, branch_key),
)
write = st.one_of(
    st.tuples(st.just("api_create"), branch_key),
    st.tuples(st.just("api_bulk"), branch_key, st.integers(2, 5), st.booleans()),
    st.tuples(st.just("api_patch"), index, st.booleans(), st.sampled_from([None, "A", "B"])),
    st.tuples(st.just("api_delete"), index),
    st.tuples(
        st.just("sql"),
        st.lists(sql_op, min_size=1, max_size=4),
        st.sampled_from(["commit", "rollback", "savepoint"]),
    ),
    st.tuples(st.just("push"), st.lists(push_op, min_size=0, max_size=4), st.integers(0, 3)),
    st.tuples(st.just("burst"), st.lists(burst_op, min_size=2, max_size=6)),
)
subscriber = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, len(FILTERS) - 1), st.booleans()),
    st.tuples(st.just("drop"), st.integers(0, 9)),
    st.tuples(st.just("resume"), st.integers(0, 9)),
    st.tuples(
        st.just("read"),
    ),
)
step = st.one_of(write, write, subscriber)  # two writes for one subscriber action


class World:
    """One example: a database, a server, an HTTP client, a SQL connection, subscribers."""

    def __init__(self, url: str, server: Server) -> None:
        self.url = url
        self.server = server
        self.http = httpx.Client(base_url=server.base, timeout=30,
                                 headers={"X-Pgtide-Actor": "property"})  # fmt: skip
        self.sql = db.connect(url)
        self.counter = 0
        self.subs: list[Subscriber] = []
        self.pushed: dict[str, tuple[dict[str, Any], str]] = {}  # mutation id -> (it, status)
        self.aborted_ids: set[str] = set()  # ids only aborted writes ever used
        self.statuses: list[int] = []
        self.versions: dict[str, int] = {}  # row id -> its version when a push was planned
        self.burst_conns: list[psycopg.Connection[Any]] = []

    def close(self) -> None:
        for s in self.subs:
            if s.stream is not None:
                s.stream.close()
        self.http.close()
        self.sql.close()
        for c in self.burst_conns:
            c.close()

    def fresh(self, kind: int) -> str:
        self.counter += 1
        return row_id(kind, self.counter)

    def pick(self, table: str, i: int) -> tuple[str, int, str] | None:
        """(id, version, branch_id) of the i-th row of `table` (modulo), if any."""
        rows = self.sql.execute(
            sql.SQL("SELECT id::text, version, branch_id::text FROM {} ORDER BY id").format(
                sql.Identifier(table)
            )
        ).fetchall()
        return rows[i % len(rows)] if rows else None

    def call(self, method: str, path: str, expect: set[int], **kw: Any) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        self.statuses.append(r.status_code)
        assert r.status_code < 500, (method, path, r.status_code, r.text)
        assert r.status_code in expect, (method, path, r.status_code, r.text)
        return r

    def client_body(self, branch: str, cid: str) -> dict[str, Any]:
        return {"id": cid, "branch_id": BRANCH[branch], "full_name": f"Client {cid[-4:]}"}

    # the steps

    def api_create(self, branch: str) -> None:
        self.call("POST", "/api/clients", {201}, json=self.client_body(branch, self.fresh(1)))

    def api_bulk(self, branch: str, n: int, poison: bool) -> None:
        ids = [self.fresh(1) for _ in range(n)]
        body = [self.client_body(branch, i) for i in ids]
        if poison:
            body[-1]["id"] = ids[0]  # a duplicate key: the whole array is refused
            self.call("POST", "/api/clients", {409}, json=body)
            self.aborted_ids.update(ids)
        else:
            r = self.call("POST", "/api/clients", {201}, json=body)
            assert [x["id"] for x in r.json()["data"]] == ids

    def api_patch(self, i: int, stale: bool, move: str | None) -> None:
        picked = self.pick("clients", i)
        if picked is None:
            self.call("PATCH", f"/api/clients/{row_id(1, 999999)}", {404}, json={"notes": "x"})
            return
        cid, version, _ = picked
        body: dict[str, Any] = {"notes": f"patched {self.fresh(9)[-4:]}"}
        if move is not None:
            body["branch_id"] = BRANCH[move]
        tag = f'"{version - 1 if stale else version}"'
        r = self.call("PATCH", f"/api/clients/{cid}", {412} if stale else {200},
                      json=body, headers={"If-Match": tag})  # fmt: skip
        if not stale:
            assert r.json()["data"]["version"] == version + 1

    def api_delete(self, i: int) -> None:
        picked = self.pick("clients", i)
        target = picked[0] if picked else row_id(1, 999999)
        self.call("DELETE", f"/api/clients/{target}", {200} if picked else {404})

    def sql_tx(self, ops: list[tuple[Any, ...]], end: str) -> None:
        conn = self.sql
        used: list[str] = []
        with conn.transaction(force_rollback=end == "rollback"):
            conn.execute("SELECT set_config('pgtide.actor', 'psql', true)")
            if end == "savepoint":
                conn.execute("SAVEPOINT sp")
            for op in ops:
                used += self.sql_op(op)
            if end == "savepoint":
                conn.execute("ROLLBACK TO SAVEPOINT sp")
                # And one change that stays.
                used_kept = self.sql_op(("ins", "A"))
                assert used_kept
        if end != "commit":
            self.aborted_ids.update(used)
            if end == "savepoint":
                self.aborted_ids.difference_update(used_kept)

    def sql_op(self, op: tuple[Any, ...]) -> list[str]:
        """Run one SQL change; return the new ids it used."""
        c, kind = self.sql, op[0]
        if kind == "ins":
            cid = self.fresh(1)
            c.execute("INSERT INTO clients (id, branch_id, full_name) VALUES (%s, %s, 'Sql')",
                      (cid, BRANCH[op[1]]))  # fmt: skip
            return [cid]
        if kind == "prod_ins":
            pid = self.fresh(2)
            c.execute("INSERT INTO products (id, branch_id, sku, name, price) "
                      "VALUES (%s, %s, %s, 'Pill', 1.50)",
                      (pid, BRANCH[op[1]], pid[-6:]))  # fmt: skip
            return [pid]
        table = "products" if kind.startswith("prod_") else "clients"
        picked = self.pick(table, op[1])
        if picked is None:
            return []
        target = picked[0]
        if kind == "upd":
            c.execute("UPDATE clients SET notes = coalesce(notes, '') || '+' WHERE id = %s",
                      (target,))  # fmt: skip
        elif kind == "move":
            c.execute("UPDATE clients SET branch_id = %s WHERE id = %s", (BRANCH[op[2]], target))
        elif kind == "prod_upd":
            c.execute("UPDATE products SET price = price + 1, stock = stock + 1 WHERE id = %s",
                      (target,))  # fmt: skip
        else:  # del, prod_del
            c.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(sql.Identifier(table)),
                      (target,))  # fmt: skip
        return []

    def push(self, ops: list[tuple[Any, ...]], resend: int) -> None:
        mutations: list[dict[str, Any]] = []
        for op in ops:
            mid = f"m-{self.fresh(9)[-6:]}"
            if op[0] == "insert":
                cid = self.fresh(1)
                data = {"branch_id": BRANCH[op[1]], "full_name": "Pushed"}
                mutations.append({"mutation_id": mid, "resource": "clients", "op": "insert",
                                  "id": cid, "data": data})  # fmt: skip
                continue
            picked = self.pick("clients", op[1])
            if picked is None:
                continue
            cid, version, _ = picked
            self.versions[cid] = version
            m = {"mutation_id": mid, "resource": "clients", "op": op[0], "id": cid,
                 "base_version": version + 1 if op[2] else version}  # fmt: skip
            if op[0] == "update":
                m["data"] = {"notes": f"pushed {mid}"}
            mutations.append(m)
        # Resend earlier mutations, byte for byte: applied ones must come back `duplicate`.
        earlier = sorted(self.pushed)
        resent = [self.pushed[mid][0] for mid in earlier[-resend:]] if resend else []
        body = {"client_id": "tablet", "policy": "version", "mutations": resent + mutations}
        if not body["mutations"]:
            return
        r = self.call("POST", "/api/sync/push", {200}, json=body)
        results = r.json()["results"]
        assert len(results) == len(body["mutations"])
        touched = [m.get("id") for m in body["mutations"]]
        for m, res in zip(body["mutations"], results, strict=True):
            mid = m["mutation_id"]
            if mid in self.pushed and self.pushed[mid][1] in ("applied", "duplicate"):
                assert res["status"] == "duplicate", (m, res)
                continue
            if mid not in self.pushed and touched.count(m["id"]) == 1:
                # The only mutation of its row in this push: the outcome is known.
                stale = m["op"] != "insert" and m["base_version"] != self.version_of(m["id"])
                assert res["status"] == ("conflict" if stale else "applied"), (m, res)
            else:
                assert res["status"] in ("applied", "conflict"), (m, res)
            self.pushed[mid] = (m, res["status"])

    def version_of(self, cid: str) -> int | None:
        """The version a row had before the push (recorded when its mutation was made)."""
        return self.versions.get(cid)

    def burst(self, ops: list[tuple[Any, ...]]) -> None:
        """Concurrent writes, each on its own connection, released together: API and SQL
        writers racing for the same rows (their row locks decide the order)."""
        planned: list[Callable[[httpx.Client, psycopg.Connection[Any]], None]] = []
        for op in ops:
            picked = self.pick("clients", op[1]) if op[0] != "create" else None
            target = picked[0] if picked else row_id(1, 999999)
            planned.append(self.burst_action(op, target))
        barrier = threading.Barrier(len(planned))
        errors: list[BaseException] = []

        while len(self.burst_conns) < len(planned):  # kept for the example's later bursts
            self.burst_conns.append(db.connect(self.url))

        def run(
            action: Callable[[httpx.Client, psycopg.Connection[Any]], None],
            conn: psycopg.Connection[Any],
        ) -> None:
            try:
                barrier.wait(10)
                action(self.http, conn)  # httpx.Client is thread-safe; it pools connections
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=run, args=(a, c))
            for a, c in zip(planned, self.burst_conns, strict=False)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

    def burst_action(
        self, op: tuple[Any, ...], target: str
    ) -> Callable[[httpx.Client, psycopg.Connection[Any]], None]:
        kind = op[0]
        body: dict[str, Any] = {}
        if kind == "create":
            body = self.client_body(op[1], self.fresh(1))
        elif kind == "patch":
            body = {"notes": f"burst {self.fresh(9)[-4:]}"}

        def act(http: httpx.Client, conn: psycopg.Connection[Any]) -> None:
            headers = {"X-Pgtide-Actor": "burst"}
            if kind == "create":
                r = http.post("/api/clients", json=body, headers=headers)
                assert r.status_code == 201, r.text
            elif kind == "patch":
                r = http.patch(f"/api/clients/{target}", json=body, headers=headers)
                assert r.status_code in (200, 404), r.text  # 404: deleted by a racer
            elif kind == "delete":
                r = http.delete(f"/api/clients/{target}", headers=headers)
                assert r.status_code in (200, 404), r.text
            elif kind == "sql_upd":
                conn.execute("UPDATE clients SET notes = coalesce(notes, '') || '*' "
                             "WHERE id = %s", (target,))  # fmt: skip
            else:  # move
                conn.execute("UPDATE clients SET branch_id = %s WHERE id = %s",
                             (BRANCH[op[2]], target))  # fmt: skip

        return act

    def subscribe(self, f: int, since_now: bool) -> None:
        if len(self.subs) >= 10:
            return
        sub = Subscriber(self.server.base, FILTERS[f], since_now)
        sub.connect()
        self.subs.append(sub)

    def drop(self, i: int) -> None:
        live = [s for s in self.subs if s.stream is not None]
        if live:
            live[i % len(live)].drop()

    def resume(self, i: int) -> None:
        gone = [s for s in self.subs if s.stream is None]
        if gone:
            gone[i % len(gone)].connect()

    def read(self) -> None:
        for s in self.subs:
            s.read()

    def run(self, steps: list[tuple[Any, ...]]) -> None:
        actions: dict[str, Callable[..., None]] = {
            "api_create": self.api_create, "api_bulk": self.api_bulk,
            "api_patch": self.api_patch, "api_delete": self.api_delete, "sql": self.sql_tx,
            "push": self.push, "subscribe": self.subscribe, "drop": self.drop,
            "resume": self.resume, "read": self.read, "burst": self.burst,
        }  # fmt: skip
        for name, *args in steps:
            actions[name](*args)

    def check(self) -> None:
        publish_marker(self.sql, 1)
        for s in self.subs:
            s.finish(1)
        upto = self.subs[0].got[-1]["seq"]
        log = logged(self.sql, upto)
        for s in self.subs:
            expected = [e for e in log if e["seq"] > s.start and s.flt.match(e)]
            assert_exactly(s.got, expected, f"{s.flt.name} ({s.connections} connections)")
        # Replicas: the unfiltered one equals the tables, the branch one the branch's rows.
        cols = tracked_pk_columns(self.sql, TABLES)
        replica = Replica(cols)
        for e in self.subs[0].got:
            replica.apply(e["table"], e["op"], e["row"], e["old"])
        for t in TABLES:
            assert replica.tables[t] == table_contents(self.sql, t, cols[t]), t
        for s in self.subs:
            if s.flt.name == "branch A" and not s.since_now:
                self.check_branch_replica(s, cols)
        # Aborted writes left nothing; each applied mutation id was logged by one transaction.
        aborted = self.sql.execute(
            "SELECT count(*) FROM pgtide.sync_log WHERE pk ->> 'id' = ANY(%s)",
            (list(self.aborted_ids),),
        ).fetchone()
        assert aborted == (0,), self.aborted_ids
        per_mutation = self.sql.execute(
            "SELECT mutation_id, count(DISTINCT txid) FROM pgtide.sync_log "
            "WHERE mutation_id LIKE 'm-%' GROUP BY 1 HAVING count(DISTINCT txid) > 1"
        ).fetchall()
        assert per_mutation == []
        applied = {m for m, (_, st_) in self.pushed.items() if st_ in ("applied", "duplicate")}
        if os.environ.get("PGTIDE_PROPERTY_VERBOSE"):
            print(f"\n{len(self.subs)} subscribers, {sum(s.connections for s in self.subs)} "
                  f"connections, {len(log)} changes, {len(self.pushed)} mutations, "
                  f"statuses {sorted(set(self.statuses))}, events "
                  f"{[len(s.got) for s in self.subs]}")  # fmt: skip
        logged_ids = {r[0] for r in self.sql.execute(
            "SELECT DISTINCT mutation_id FROM pgtide.sync_log "
            "WHERE mutation_id LIKE 'm-%'")}  # fmt: skip
        assert logged_ids == applied

    def check_branch_replica(self, s: Subscriber, cols: dict[str, list[str]]) -> None:
        """A replica from branch A's events holds exactly branch A's rows: rows come in
        (INSERT, or an UPDATE moving one in) and leave (DELETE, or an UPDATE moving one out)."""
        rows: dict[str, dict[str, dict[str, Any]]] = {"clients": {}, "products": {}}
        for e in s.got:
            if is_marker(e):
                continue
            mine, pk = rows[e["table"]], cols[e["table"]]
            if e["old"] is not None:
                k = key_of(e["old"], pk)
                if k in mine:
                    assert mine.pop(k) == e["old"], f"{s.flt.name}: out of order at {k}"
                else:  # it was outside the branch before this change
                    assert e["old"]["branch_id"] != BRANCH["A"], k
            if e["row"] is not None and e["row"]["branch_id"] == BRANCH["A"]:
                mine[key_of(e["row"], pk)] = e["row"]
        for t in ("clients", "products"):
            want = {k: v for k, v in table_contents(self.sql, t, cols[t]).items()
                    if v["branch_id"] == BRANCH["A"]}  # fmt: skip
            assert rows[t] == want, f"branch A replica of {t} differs"


@pytest.mark.timeout(300)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate]
    + ([Phase.shrink] if os.environ.get("PGTIDE_PROPERTY_SHRINK") else []),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip
@given(steps=st.lists(step, min_size=20, max_size=60))
def test_every_subscriber_gets_exactly_the_log_whatever_the_interleaving(
    server_url: str, template_db: str, steps: list[tuple[Any, ...]]
) -> None:
    note(f"steps: {steps!r}")
    name = f"pgtide_p_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template_db)))  # fmt: skip
    url = with_dbname(server_url, name)
    with db.connect(url) as conn:
        conn.execute("INSERT INTO branches (id, code, name) VALUES (%s, 'A', 'A'), (%s, 'B', 'B')",
                     (BRANCH["A"], BRANCH["B"]))  # fmt: skip
    server = Server(url, env=FAST).start()
    world = World(url, server)
    try:
        world.subscribe(0, False)  # the unfiltered one, from the start: the replica's
        world.run(steps)
        world.check()
    finally:
        world.close()
        server.stop()
        drop_database(server_url, name)
