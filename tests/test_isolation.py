"""Branch isolation across references: a pinned token never reaches another branch's row
through a foreign key, an id, a last-write-wins clock or a TRUNCATE (issue 13).

Every test runs against a real server with auth on (the `world` fixture, tests/auth.py:
branches A and B, a pinned token for each, an admin token).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from cdc import db, tracking
from tests.auth import World, make_token
from tests.live import Server, Stream, problem_of


@pytest.fixture
def w(world: World) -> World:
    """Branches A and B, a pinned token for each, on a server with auth on."""
    return world


def _client(w: World, kind: str) -> httpx.Client:
    return httpx.Client(base_url=w.server.base, headers=w.headers(kind), timeout=10)


def test_a_pinned_write_cannot_reference_another_branchs_row_by_any_route(w: World) -> None:
    a, b = w.branch["A"], w.branch["B"]
    a_client, b_client = w.new_client("A"), w.new_client("B", "secret-b")
    missing = str(uuid.uuid4())
    answers: dict[str, list[Any]] = {}
    with _client(w, "A") as c:
        for label, ref in (("elsewhere", b_client), ("missing", missing)):
            order = {"branch_id": a, "client_id": ref}
            made = c.post("/api/orders", json={"branch_id": a, "client_id": a_client}).json()
            mine = made["data"]["id"]
            csv = f"branch_id,client_id\n{a},{a_client}\n{a},{ref}\n"
            visit = {"branch_id": a, "client_id": ref, "starts_at": "2030-01-02T10:00:00+00:00"}
            push = {"client_id": "t", "mutations": [{
                "mutation_id": str(uuid.uuid4()), "resource": "appointments", "op": "insert",
                "id": str(uuid.uuid4()), "data": visit}]}  # fmt: skip
            responses = [
                c.post("/api/orders", json=order),
                c.post("/api/orders", json=[{"branch_id": a, "client_id": a_client}, order]),
                c.patch(f"/api/orders/{mine}", json={"client_id": ref}),
                c.put(f"/api/orders/{mine}", json=order),
                c.post("/api/orders", content=csv, headers={"Content-Type": "text/csv"}),
            ]
            answers[label] = [(r.status_code, problem_of(r)) for r in responses]
            pushed = c.post("/api/sync/push", json=push)
            assert pushed.status_code == 200, pushed.text
            result = pushed.json()["results"][0]
            answers[label].append((result["status"], result["detail"], result["errors"]))
    # Another branch's client is answered exactly as a client that does not exist.
    assert answers["elsewhere"] == answers["missing"]
    statuses = [a[0] for a in answers["elsewhere"]]
    assert statuses == [422, 422, 422, 422, 422, "rejected"]
    for _, problem in answers["elsewhere"][:5]:
        assert [e["field"] for e in problem["errors"]] == ["client_id"]
    assert answers["elsewhere"][1][1]["index"] == 1
    assert answers["elsewhere"][4][1]["line"] == 3
    with db.connect(w.url) as conn:
        refs = conn.execute(
            "SELECT (SELECT count(*) FROM orders WHERE client_id = %(b)s)"
            " + (SELECT count(*) FROM appointments WHERE client_id = %(b)s)",
            {"b": b_client},
        ).fetchone()
    assert refs == (0,)
    # Nothing of branch A blocks branch B's delete.
    with _client(w, "B") as c:
        assert c.delete(f"/api/clients/{b_client}").status_code == 200
    assert b != a


def test_creating_an_id_of_another_branch_answers_as_an_id_of_ones_own(w: World) -> None:
    a = w.branch["A"]
    a_client, b_client = w.new_client("A"), w.new_client("B")
    with _client(w, "A") as c:
        own = c.post("/api/clients", json={"id": a_client, "branch_id": a, "full_name": "x"})
        other = c.post("/api/clients", json={"id": b_client, "branch_id": a, "full_name": "x"})
        pushed = [
            c.post("/api/sync/push", json={"policy": policy, "mutations": [{
                "mutation_id": str(uuid.uuid4()), "resource": "clients", "op": "insert",
                "id": cid, "data": {"branch_id": a, "full_name": "x"},
                "client_ts": "2030-01-01T00:00:00+00:00"}]}).json()["results"][0]
            for policy in ("version", "lww") for cid in (a_client, b_client)
        ]  # fmt: skip
    assert own.status_code == other.status_code == 409
    assert problem_of(own) == problem_of(other)
    assert "constraint" not in other.json() and "pkey" not in other.text
    assert "id" in problem_of(other)["detail"]
    for result in pushed:
        assert (result["status"], result["detail"]) == (
            "conflict",
            "a row with this id already exists",
        ), result
    assert all(r["row"] is None for r in pushed[1::2])  # another branch's row is never shown


def test_a_last_write_wins_conflict_never_shows_another_branchs_clock(w: World) -> None:
    a, b = w.branch["A"], w.branch["B"]
    b_client = w.new_client("B")
    secret = "2999-09-09T09:09:09+00:00"
    with _client(w, "B") as c:
        r = c.post("/api/sync/push", json={"policy": "lww", "mutations": [{
            "mutation_id": "b1", "resource": "clients", "op": "update", "id": b_client,
            "data": {"notes": "b"}, "client_ts": secret}]})  # fmt: skip
        assert r.json()["results"][0]["status"] == "applied", r.text
    gone = str(uuid.uuid4())  # a client of B, deleted by a push: its tombstone is B's clock
    with _client(w, "B") as c:
        c.post("/api/sync/push", json={"policy": "lww", "mutations": [
            {"mutation_id": "b2", "resource": "clients", "op": "insert", "id": gone,
             "data": {"branch_id": b, "full_name": "gone"}, "client_ts": secret},
            {"mutation_id": "b3", "resource": "clients", "op": "delete", "id": gone,
             "client_ts": "2999-10-10T10:10:10+00:00"}]})  # fmt: skip
    texts = []
    with _client(w, "A") as c:
        for op, cid in (("update", b_client), ("insert", b_client), ("update", gone),
                        ("insert", gone), ("delete", b_client)):  # fmt: skip
            data = {"branch_id": a, "full_name": "a"} if op == "insert" else {"notes": "a"}
            r = c.post("/api/sync/push", json={"policy": "lww", "mutations": [{
                "mutation_id": str(uuid.uuid4()), "resource": "clients", "op": op, "id": cid,
                "data": data, "client_ts": "2030-01-01T00:00:00+00:00"}]})  # fmt: skip
            assert r.status_code == 200, r.text
            texts.append(r.text)
    everything = "\n".join(texts)
    assert "2999" not in everything, everything
    # The tombstone of B's row is not A's: A may create that id, as if it never existed.
    assert json.loads(texts[3])["results"][0]["status"] == "applied"


def test_a_pinned_stream_gets_truncates_only_of_tables_it_may_read(w: World) -> None:
    with db.connect(w.url) as conn:
        conn.execute("CREATE TABLE hidden_notes (id int PRIMARY KEY, body text)")
        conn.execute("CREATE TABLE branch_notes (id int PRIMARY KEY, branch_id uuid)")
        tracking.track(conn, "hidden_notes")
        tracking.track(conn, "branch_notes")
    s = Stream(w.server.base, "/events", w.headers("A"))
    try:
        with db.connect(w.url) as conn:
            conn.execute("INSERT INTO hidden_notes VALUES (1, 'secret')")
            conn.execute("TRUNCATE hidden_notes")
            conn.execute("TRUNCATE branch_notes")
        w.new_client("A", "after")
        got = [(e["table"], e["op"]) for e in s.changes(2)]
    finally:
        s.close()
    assert got == [("branch_notes", "TRUNCATE"), ("clients", "INSERT")]


def test_a_pinned_create_without_the_tenant_column_takes_the_tokens_branch(w: World) -> None:
    a = w.branch["A"]
    with _client(w, "A") as c:
        made = c.post("/api/clients", json={"full_name": "No branch given"})
        assert made.status_code == 201, made.text
        assert made.json()["data"]["branch_id"] == a
        # Named, it must still be the token's own; PUT fills it the same way.
        other = c.post("/api/clients", json={"full_name": "X", "branch_id": w.branch["B"]})
        assert other.status_code == 403
        put = c.put(f"/api/clients/{made.json()['data']['id']}", json={"full_name": "Renamed"})
        assert put.status_code == 200 and put.json()["data"]["branch_id"] == a


def test_a_pinned_token_reads_its_own_branchs_row_and_no_other_and_writes_none(
    w: World,
) -> None:
    a, b = w.branch["A"], w.branch["B"]
    with _client(w, "A") as c:
        listed = c.get("/api/branches", params={"code": "in.(A,B)"}).json()["data"]
        assert [r["id"] for r in listed] == [a]
        assert c.get(f"/api/branches/{a}").json()["data"]["code"] == "A"
        assert c.get(f"/api/branches/{b}").status_code == 404
        stream = Stream(w.server.base, "/events?tables=branches", w.headers("A"))
        try:
            refused = [
                c.patch(f"/api/branches/{a}", json={"name": "Renamed"}).status_code,
                c.delete(f"/api/branches/{a}").status_code,
                c.post("/api/branches", json={"code": "C", "name": "C"}).status_code,
            ]
            assert refused == [403, 403, 403]
            with db.connect(w.url) as conn:  # head office renames both branches
                conn.execute("UPDATE branches SET city = 'Lisboa' WHERE id IN (%s, %s)", (b, a))
            got = stream.changes(1)
        finally:
            stream.close()
    assert [(e["op"], e["pk"]["id"], e["row"]["city"]) for e in got] == [("UPDATE", a, "Lisboa")]


def test_branches_listed_as_shared_are_all_readable_on_the_api_and_the_stream(
    db_url: str,
) -> None:
    with db.connect(db_url) as conn:
        rows = conn.execute(
            "INSERT INTO branches (code, name) VALUES ('A', 'A'), ('B', 'B') RETURNING id::text"
        ).fetchall()
    both = sorted(r[0] for r in rows)
    make_token(db_url, "bootstrap", "admin")
    pin = {"Authorization": f"Bearer {make_token(db_url, 'tablet', 'read', both[0])}"}
    srv = Server(db_url, auth=True, env={"PGTIDE_PINNED_SHARED_TABLES": "branches"}).start()
    try:
        listed = httpx.get(f"{srv.base}/api/branches", headers=pin, timeout=10)
        assert sorted(r["id"] for r in listed.json()["data"]) == both
        snap = Stream(srv.base, "/events?tables=branches&snapshot=true", pin)
        assert sorted(r["pk"]["id"] for r in snap.until("synced")) == both
        snap.close()
        renamed = httpx.patch(f"{srv.base}/api/branches/{both[1]}", json={"name": "X"},
                              headers=pin, timeout=10)  # fmt: skip
        assert renamed.status_code == 403  # shared is read only
    finally:
        srv.stop()
