"""GET /events against a real `pgtide serve` and a real SSE client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from cdc import db
from tests.live import Server, Stream, problem_of
from tests.replica import Replica, table_contents, tracked_pk_columns


@pytest.fixture
def server(db_url: str) -> Iterator[Server]:
    srv = Server(db_url).start()
    yield srv
    srv.stop()


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(db_url) as conn:
        yield conn


def branch(sql: psycopg.Connection[Any], code: str) -> str:
    row = sql.execute(
        "INSERT INTO branches (code, name) VALUES (%s, %s) RETURNING id::text", (code, code)
    ).fetchone()
    assert row is not None
    return str(row[0])


def client(sql: psycopg.Connection[Any], branch_id: str, name: str) -> str:
    row = sql.execute(
        "INSERT INTO clients (branch_id, full_name) VALUES (%s, %s) RETURNING id::text",
        (branch_id, name),
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_plain_sql_changes_arrive_as_default_events_with_every_field(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    s = Stream(server.base, "/events?tables=clients")
    assert s.status == 200 and s.headers is not None
    assert s.headers["content-type"].startswith("text/event-stream")
    s.until("synced")
    b = branch(sql, "B1")
    with sql.transaction():
        sql.execute("SET LOCAL pgtide.actor = 'alice'")
        sql.execute("SET LOCAL pgtide.origin = 'branch-1'")
        sql.execute("SET LOCAL pgtide.mutation_id = 'm-1'")
        cid = client(sql, b, "Ann")
        txid = sql.execute("SELECT pg_current_xact_id()::text").fetchone()[0]  # type: ignore[index]
    sql.execute("UPDATE clients SET email = 'ann@example.com' WHERE id = %s", (cid,))
    sql.execute("DELETE FROM clients WHERE id = %s", (cid,))
    ins, upd, dele = s.changes(3)
    s.close()
    assert set(ins) == {
        "cursor", "seq", "txid", "id", "at", "schema", "table", "op", "pk", "row", "old",
        "changed", "actor", "origin", "mutation_id",
    }  # fmt: skip
    assert (ins["op"], ins["table"], ins["schema"], ins["pk"]) == (
        "INSERT", "clients", "public", {"id": cid},
    )  # fmt: skip
    assert ins["row"]["full_name"] == "Ann" and ins["old"] is None and ins["changed"] is None
    assert (ins["actor"], ins["origin"], ins["mutation_id"], ins["txid"]) == (
        "alice", "branch-1", "m-1", txid,
    )  # fmt: skip
    assert ins["cursor"] == str(ins["seq"])
    assert upd["op"] == "UPDATE" and "email" in upd["changed"] and upd["old"]["email"] is None
    assert upd["row"]["email"] == "ann@example.com" and upd["actor"] is None
    assert dele["op"] == "DELETE" and dele["row"] is None and dele["old"]["id"] == cid
    assert [e["seq"] for e in (ins, upd, dele)] == sorted(e["seq"] for e in (ins, upd, dele))


def test_filters_and_ops_select_exactly_the_matching_events(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    b1, b2 = branch(sql, "B1"), branch(sql, "B2")
    mine = Stream(server.base, f"/events?tables=clients&branch_id=eq.{b1}")
    deletes = Stream(server.base, "/events?tables=clients&ops=delete")
    named = Stream(server.base, "/events?full_name=in.(Bea,%22Cy,Jr%22)")
    for s in (mine, deletes, named):
        s.until("synced")
    a = client(sql, b1, "Ann")
    client(sql, b2, "Bea")
    cy = client(sql, b2, "Cy,Jr")
    sql.execute("UPDATE clients SET branch_id = %s WHERE id = %s", (b2, a))  # leaves b1
    sql.execute("UPDATE clients SET notes = 'x' WHERE id = %s", (a,))  # now b2 only
    sql.execute("DELETE FROM clients WHERE id = %s", (cy,))
    sql.execute("SELECT pgtide.publish('marker', '{}')")  # a message: nobody asked for topics
    end = client(sql, b1, "End")  # a final b1 insert marks the end for `mine`

    got = mine.changes(3)
    assert [(e["op"], e["pk"]["id"]) for e in got] == [
        ("INSERT", a), ("UPDATE", a), ("INSERT", end),
    ]  # fmt: skip
    assert got[1]["old"]["branch_id"] == b1 and got[1]["row"]["branch_id"] == b2
    assert [(e["op"], e["pk"]["id"]) for e in deletes.changes(1)] == [("DELETE", cy)]
    assert [(e["op"], e["row"] and e["row"]["full_name"]) for e in named.changes(3)] == [
        ("INSERT", "Bea"), ("INSERT", "Cy,Jr"), ("DELETE", None),
    ]  # fmt: skip
    # Nothing else arrives: a last event for each proves the order and the absence.
    sql.execute("DELETE FROM clients WHERE id = %s", (end,))
    assert mine.changes(1)[0]["op"] == "DELETE"
    assert deletes.changes(1)[0]["pk"]["id"] == end
    for s in (mine, deletes, named):
        s.close()


def test_messages_from_publish_are_ordered_and_selected_by_topics(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    s = Stream(server.base, "/events?topics=alerts&tables=branches")
    s.until("synced")
    with sql.transaction():
        sql.execute("SELECT pgtide.publish('alerts', '{\"level\": 1}')")
        sql.execute("SELECT pgtide.publish('other', '{}')")
    with pytest.raises(psycopg.errors.DivisionByZero), sql.transaction():
        sql.execute("SELECT pgtide.publish('alerts', '{\"level\": 99}')")
        sql.execute("SELECT 1/0")  # rolled back: the message never existed
    branch(sql, "B9")
    sql.execute("SELECT pgtide.publish('alerts', '{\"level\": 2}')")
    got = s.changes(3)
    s.close()
    assert [(e["op"], e["table"]) for e in got] == [
        ("MESSAGE", "alerts"), ("INSERT", "branches"), ("MESSAGE", "alerts"),
    ]  # fmt: skip
    assert [e["row"] for e in got if e["op"] == "MESSAGE"] == [{"level": 1}, {"level": 2}]


BAD_REQUESTS = [
    ("since=abc", "malformed cursor"),
    ("since=-1", "malformed cursor"),
    ("since=99999999", "ahead of the log"),
    ("tables=nope", "unknown table"),
    ("tables=clients&colour=eq.red", "unknown column"),
    ("tables=clients&full_name=like.A", "unknown operator"),
    ("tables=clients&full_name=A", "unknown operator"),
    ("ops=insert,upsert", "unknown op"),
    ("ops=", "ops must be"),
    ("tables=products&price=gt.cheap", "not a valid number"),
    ("tables=clients&created_at=gt.yesterday", "not a valid time"),
    ("tables=orders&items=eq.x", "only is.null"),
    ("tables=clients&full_name=eq.x';DROP TABLE clients;--&id=in.(", "parenthesised"),
    ("snapshot=maybe", "snapshot must be"),
    ("snapshot=true&since=0", "cannot be combined"),
]


def test_bad_requests_get_400_problem_json_before_the_stream(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    for query, needle in BAD_REQUESTS:
        r = httpx.get(f"{server.base}/events?{query}", timeout=5)
        assert r.status_code == 400, (query, r.text)
        assert needle in problem_of(r)["detail"], query
    assert sql.execute("SELECT count(*) FROM clients").fetchone() == (0,)
    r = httpx.get(f"{server.base}/events", headers={"Last-Event-ID": "12x"}, timeout=5)
    assert r.status_code == 400 and "malformed cursor" in problem_of(r)["detail"]


def test_reconnect_with_last_event_id_gets_exactly_the_missed_events_then_live(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    b = branch(sql, "B1")
    s = Stream(server.base, "/events?tables=clients")
    s.until("synced")
    first = [client(sql, b, f"c{i}") for i in range(3)]
    got = s.changes(3)
    assert [e["pk"]["id"] for e in got] == first
    s.close()
    missed = [client(sql, b, f"m{i}") for i in range(5)]
    sql.execute("UPDATE clients SET notes = 'n' WHERE id = %s", (first[0],))
    s2 = Stream(server.base, "/events?tables=clients", headers={"Last-Event-ID": s.last_id or ""})
    caught = s2.until("synced")
    assert [e["pk"]["id"] for e in caught] == [*missed, first[0]]
    # Only clients were written meanwhile: the missed seqs follow the last one seen, no gap.
    start = got[-1]["seq"] + 1
    assert [e["seq"] for e in caught] == list(range(start, start + 6))
    live = client(sql, b, "live")
    assert s2.changes(1)[0]["pk"]["id"] == live
    s2.close()
    # since=<cursor> is the same as Last-Event-ID; since=earliest replays everything.
    s3 = Stream(server.base, f"/events?tables=clients&since={got[-1]['cursor']}")
    assert [e["pk"]["id"] for e in s3.until("synced")] == [*missed, first[0], live]
    s3.close()
    s4 = Stream(server.base, "/events?tables=clients&since=earliest")
    assert len(s4.until("synced")) == 3 + 5 + 1 + 1
    s4.close()


def test_snapshot_under_concurrent_writes_is_followed_by_exactly_the_missing_changes(
    server: Server, sql: psycopg.Connection[Any], db_url: str
) -> None:
    b = branch(sql, "B1")
    for i in range(200):
        client(sql, b, f"seed{i}")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as w:
                i = 0
                while not stop.is_set():
                    i += 1
                    w.execute(
                        "INSERT INTO clients (branch_id, full_name) VALUES (%s, %s)",
                        (b, f"w{n}-{i}"),
                    )
                    w.execute(
                        "UPDATE clients SET notes = %s WHERE id = (SELECT id FROM clients "
                        "ORDER BY random() LIMIT 1)",
                        (f"{n}-{i}",),
                    )
                    if i % 7 == 0:
                        w.execute(
                            "DELETE FROM clients WHERE id = (SELECT id FROM clients "
                            "WHERE full_name LIKE %s ORDER BY random() LIMIT 1)",
                            (f"w{n}-%",),
                        )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        s = Stream(server.base, "/events?tables=clients&snapshot=true")
        before_synced = s.until("synced", timeout=30)
        # Let the writers go on a little while the stream is live.
        live = s.changes(30, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    head = sql.execute("SELECT last_seq FROM pgtide.sync_sequencer").fetchone()
    # Wait for the sequencer to take the writers' last commits, then for the stream.
    with db.connect(db_url) as w:
        w.execute("LISTEN pgtide_sequenced")
        while sql.execute(
            "SELECT (SELECT count(*) FROM pgtide.sync_log) "
            "> (SELECT count(*) FROM pgtide.sync_order)"
        ).fetchone() == (True,):
            for _ in w.notifies(timeout=1, stop_after=1):
                pass
        final = int(w.execute("SELECT last_seq FROM pgtide.sync_sequencer").fetchone()[0])  # type: ignore[index]
    assert head is not None
    pk_columns = tracked_pk_columns(sql, ["clients"])
    replica = Replica(pk_columns)
    snapshot_rows = [e for e in before_synced if e["op"] == "SNAPSHOT"]
    assert len(snapshot_rows) >= 200
    for e in snapshot_rows:
        replica.apply("clients", "INSERT", e["row"], None)
    seen: set[int] = set()
    changes = [e for e in before_synced if e["op"] != "SNAPSHOT"] + live
    last = 0
    while True:
        for e in changes:
            assert e["seq"] not in seen, f"event {e['seq']} repeated"
            seen.add(e["seq"])
            replica.apply("clients", e["op"], e["row"], e["old"])
            last = e["seq"]
        if last >= final:
            break
        # Only event ids after `synced` are positions; all are changes to clients here.
        changes = s.changes(1, timeout=20)
    s.close()
    assert replica.tables["clients"] == table_contents(sql, "clients", pk_columns["clients"])


def test_snapshot_respects_column_filters_and_events_before_synced_carry_no_id(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    b1, b2 = branch(sql, "B1"), branch(sql, "B2")
    keep = client(sql, b1, "keep")
    client(sql, b2, "other")
    s = Stream(server.base, f"/events?tables=clients&snapshot=true&branch_id=eq.{b1}")
    rows: list[Any] = []
    while True:
        ev = s.next()
        assert ev is not None
        if ev.event == "synced":
            assert ev.id and int(ev.id) >= 0
            break
        if ev.event == "message":
            assert not ev.id  # snapshot rows are not positions in the log
            rows.append(json.loads(ev.data))
    s.close()
    assert [(r["op"], r["pk"], r["row"]["full_name"]) for r in rows] == [
        ("SNAPSHOT", {"id": keep}, "keep")
    ]
