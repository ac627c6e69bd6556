"""The write API (/api/<resource>) against a real `pgtide serve` and a real PostgreSQL."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cdc import db, tokens
from tests.live import Server, Stream, problem_of
from tests.writing import Api, new_id

RESOURCES = [
    "branches", "clients", "appointments", "products", "orders", "distributors", "stock_requests",
]  # fmt: skip
WHO = {"X-Pgtide-Actor": "alice", "X-Pgtide-Origin": "branch-app-7"}


Bodies = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]  # create, patch, put


def samples(api: Api, resource: str) -> Bodies:
    """A create body (with a client-chosen id), a patch and a full replacement."""
    b = api.branch()["id"] if resource != "branches" else None
    rid = new_id()
    if resource == "branches":
        code = "C" + rid[:8]
        return ({"id": rid, "code": code, "name": "North", "city": "Lyon"},
                {"city": "Paris"}, {"code": code, "name": "North renamed"})  # fmt: skip
    if resource == "clients":
        return ({"id": rid, "branch_id": b, "full_name": "Bob", "email": "bob@example.com"},
                {"phone": "+33 1 23 45"}, {"branch_id": b, "full_name": "Robert"})  # fmt: skip
    if resource == "appointments":
        c = api.client(b)["id"]
        at = "2030-01-02T10:00:00+01:00"
        return ({"id": rid, "branch_id": b, "client_id": c, "starts_at": at,
                 "duration_minutes": 45}, {"status": "confirmed"},
                {"branch_id": b, "client_id": c, "starts_at": at})  # fmt: skip
    if resource == "products":
        return ({"id": rid, "branch_id": b, "sku": "P-1", "name": "Aspirin", "price": "9.99",
                 "stock": 3}, {"stock": 5},
                {"branch_id": b, "sku": "P-1", "name": "Aspirin", "price": 10})  # fmt: skip
    if resource == "orders":
        c = api.client(b)["id"]
        return ({"id": rid, "branch_id": b, "client_id": c, "items": [{"sku": "A", "qty": 2}],
                 "total": 19.98}, {"status": "paid"},
                {"branch_id": b, "client_id": c, "currency": "USD"})  # fmt: skip
    if resource == "distributors":
        return ({"id": rid, "branch_id": b, "name": "Pharma", "agreement": {"discount": 0.1}},
                {"contact_email": "sales@pharma.example"},
                {"branch_id": b, "name": "Other"})  # fmt: skip
    assert resource == "stock_requests"
    p = api.product(b)["id"]
    return ({"id": rid, "branch_id": b, "product_id": p, "quantity": 10},
            {"status": "approved"}, {"branch_id": b, "product_id": p, "quantity": 12})  # fmt: skip


DEFAULTS = {  # what PUT gives the fields the sample replacement leaves out
    "branches": {"city": None, "timezone": "UTC"},
    "clients": {"email": None, "phone": None},
    "appointments": {"duration_minutes": 30, "status": "scheduled"},
    "products": {"stock": 0},
    "orders": {"items": [], "total": 0, "status": "new"},
    "distributors": {"agreement": {}, "contact_email": None},
    "stock_requests": {"status": "requested", "note": None},
}


# --- round trips


@pytest.mark.parametrize("resource", RESOURCES)
def test_create_read_patch_put_list_delete_round_trip(api: Api, resource: str) -> None:
    create, patch, put = samples(api, resource)
    rid = create["id"]
    path = f"/api/{resource}/{rid}"

    r = api.http.post(f"/api/{resource}", json=create, headers={**WHO, "Idempotency-Key": rid})
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == '"1"' and r.headers["location"] == path
    made = r.json()["data"]
    assert made["id"] == rid and made["version"] == 1 and made["created_at"]
    same = {k: v for k, v in create.items() if k not in ("starts_at", "price", "total")}
    assert {k: made[k] for k in same} == same
    txids = [r.json()["txid"]]

    got = api.http.get(path)
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    assert got.json() == {"data": made}
    assert api.http.get(path, headers={"If-None-Match": '"1"'}).status_code == 304

    r = api.http.patch(path, json=patch, headers={**WHO, "If-Match": '"1"'})
    assert r.status_code == 200, r.text
    patched = r.json()["data"]
    assert patched["version"] == 2 and r.headers["etag"] == '"2"'
    assert {k: patched[k] for k in patch} == patch
    txids.append(r.json()["txid"])

    r = api.http.put(path, json=put, headers={**WHO, "If-Match": '"2"'})
    assert r.status_code == 200, r.text
    replaced = r.json()["data"]
    assert replaced["version"] == 3
    assert {k: replaced[k] for k in DEFAULTS[resource]} == DEFAULTS[resource]
    txids.append(r.json()["txid"])

    listed = api.http.get(f"/api/{resource}", params={"id": f"eq.{rid}"})
    assert listed.status_code == 200 and listed.json() == {"data": [replaced], "next": None}

    r = api.http.delete(path, headers={**WHO, "If-Match": '"3"'})
    assert r.status_code == 200 and r.json()["data"] == replaced
    txids.append(r.json()["txid"])
    assert api.http.get(path).status_code == 404

    assert api.log(rid) == [
        ("INSERT", "alice", "branch-app-7", rid, txids[0]),
        ("UPDATE", "alice", "branch-app-7", None, txids[1]),
        ("UPDATE", "alice", "branch-app-7", None, txids[2]),
        ("DELETE", "alice", "branch-app-7", None, txids[3]),
    ]


def test_server_chooses_the_id_when_the_client_does_not(api: Api) -> None:
    b = api.branch()
    assert len(b["id"]) == 36 and b["version"] == 1 and b["timezone"] == "UTC"


def test_a_write_that_changes_nothing_keeps_the_version_and_logs_nothing(api: Api) -> None:
    b = api.branch()
    before = len(api.log(b["id"]))
    for body in ({}, {"name": b["name"]}):
        r = api.http.patch(f"/api/branches/{b['id']}", json=body, headers={"If-Match": '"1"'})
        assert r.status_code == 200 and r.json()["data"]["version"] == 1
    assert len(api.log(b["id"])) == before


def test_the_txid_of_a_write_is_the_txid_of_its_event_on_the_stream(
    api: Api, live: tuple[Server, str]
) -> None:
    b = api.branch()
    s = Stream(live[0].base, f"/events?tables=clients&branch_id=eq.{b['id']}")
    try:
        s.until("synced")
        r = api.http.post("/api/clients", json={"branch_id": b["id"], "full_name": "Zed"},
                          headers={**WHO, "Idempotency-Key": "k-stream"})  # fmt: skip
        assert r.status_code == 201
        (event,) = s.changes(1)
    finally:
        s.close()
    assert event["txid"] == r.json()["txid"]
    assert (event["op"], event["row"], event["actor"], event["origin"], event["mutation_id"]) == (
        "INSERT", r.json()["data"], "alice", "branch-app-7", "k-stream",
    )  # fmt: skip


# --- arrays


def test_an_array_is_created_in_one_transaction(api: Api) -> None:
    b = api.branch()["id"]
    body = [{"branch_id": b, "full_name": f"Client {i}"} for i in range(1000)]
    r = api.post("/api/clients", body)
    assert r.status_code == 201, r.text
    rows = r.json()["data"]
    assert [x["full_name"] for x in rows] == [f"Client {i}" for i in range(1000)]
    assert api.scalar(
        "SELECT count(DISTINCT txid) || '/' || count(*) FROM pgtide.sync_log"
        " WHERE table_name = 'clients' AND new_row ->> 'branch_id' = %s",
        b,
    ) == f"1/{1000}"  # fmt: skip
    assert api.scalar(
        "SELECT DISTINCT txid::text FROM pgtide.sync_log WHERE new_row ->> 'branch_id' = %s", b
    ) == r.json()["txid"]  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "status", "index", "field"),
    [
        ({"sku": "X-3", "name": "Bad", "price": -1}, 422, 2, "price"),  # the model refuses it
        ({"sku": "X-0", "name": "Same sku as element 0", "price": 1}, 409, 2, None),  # unique
        ({"sku": "X-3", "name": "Nowhere", "price": 1, "branch_id": new_id()}, 422, 2,
         "branch_id"),  # foreign key
    ],
)  # fmt: skip
def test_an_array_with_one_bad_element_writes_nothing_and_names_its_index(
    api: Api, bad: dict[str, Any], status: int, index: int, field: str | None
) -> None:
    b = api.branch()["id"]
    good = [{"branch_id": b, "sku": f"X-{i}", "name": f"P{i}", "price": 1} for i in range(3)]
    body = [good[0], good[1], {"branch_id": b, **bad}, good[2]]
    before = api.checksum()

    r = api.post("/api/products", body)

    problem = problem_of(r)
    assert r.status_code == status and problem["index"] == index
    assert f"element {index}" in problem["detail"]
    if field:
        assert field in {e["field"] for e in problem["errors"]}
    assert api.checksum() == before
    assert api.scalar("SELECT count(*) FROM products WHERE branch_id = %s", b) == 0


def test_a_value_only_the_database_refuses_is_422_with_its_index(api: Api) -> None:
    b = api.branch()["id"]
    nul = {"branch_id": b, "name": "D", "agreement": {"note": "a\u0000b"}}  # jsonb refuses NUL
    before = api.checksum()
    r = api.post("/api/distributors", nul)
    assert r.status_code == 422 and "invalid value" in problem_of(r)["detail"]
    r = api.post("/api/distributors", [{"branch_id": b, "name": "OK"}, nul])
    assert r.status_code == 422 and problem_of(r)["index"] == 1
    assert api.checksum() == before


def test_an_empty_array_is_refused(api: Api) -> None:
    assert api.post("/api/branches", []).status_code == 422


# --- optimistic concurrency


def test_an_unquoted_if_match_is_a_400_that_says_to_quote_it(api: Api) -> None:
    b = api.branch()
    before = api.checksum()
    for tag in ("1", '"1', "1, 2"):
        r = api.http.patch(
            f"/api/branches/{b['id']}", json={"city": "X"}, headers={"If-Match": tag}
        )
        assert r.status_code == 400 and "quoted" in problem_of(r)["detail"], (tag, r.text)
    assert api.checksum() == before


def test_a_stale_if_match_gets_412_with_the_current_row(api: Api) -> None:
    b = api.branch()
    path = f"/api/branches/{b['id']}"
    assert api.http.patch(path, json={"city": "Nice"}, headers={"If-Match": '"1"'}).is_success
    before = api.checksum()
    for tag in ('"1"', 'W/"2"', '"abc"', '"99999999999"', '"1", "3"'):
        for r in (
            api.http.patch(path, json={"city": "Rome"}, headers={"If-Match": tag}),
            api.http.put(path, json={"code": b["code"], "name": "X"}, headers={"If-Match": tag}),
            api.http.delete(path, headers={"If-Match": tag}),
        ):
            problem = problem_of(r)
            assert r.status_code == 412, (tag, r.text)
            assert problem["current"]["city"] == "Nice" and problem["current"]["version"] == 2
            assert r.headers["etag"] == '"2"'
    assert api.checksum() == before
    ok = api.http.patch(path, json={"city": "Rome"}, headers={"If-Match": '"1", "2"'})
    assert ok.status_code == 200 and ok.json()["data"]["version"] == 3
    assert api.http.patch(path, json={"city": "Oslo"}, headers={"If-Match": "*"}).status_code == 200


def test_if_match_on_a_missing_or_deleted_row_gets_404(api: Api) -> None:
    b = api.branch()
    path = f"/api/branches/{b['id']}"
    assert api.http.delete(path).status_code == 200
    for rid in (b["id"], new_id()):
        p = f"/api/branches/{rid}"
        headers = {"If-Match": '"1"'}
        assert problem_of(api.http.patch(p, json={"city": "X"}, headers=headers))["status"] == 404
        assert problem_of(api.http.delete(p, headers=headers))["status"] == 404
        r = api.http.put(p, json={"code": "Q1", "name": "Q"}, headers=headers)
        assert problem_of(r)["status"] == 404


def test_two_updates_with_the_same_if_match_exactly_one_wins(api: Api) -> None:
    b = api.branch()
    path = f"/api/branches/{b['id']}"
    barrier = threading.Barrier(8)
    results: list[httpx.Response] = []

    def attempt(i: int) -> None:
        with httpx.Client(base_url=api.base, timeout=30) as c:
            barrier.wait()
            results.append(c.patch(path, json={"city": f"City {i}"}, headers={"If-Match": '"1"'}))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.status_code == 200]
    losers = [r for r in results if r.status_code == 412]
    assert len(winners) == 1 and len(losers) == 7
    assert all(r.json()["current"] == winners[0].json()["data"] for r in losers)


# --- idempotency


def test_a_repeated_idempotency_key_returns_the_first_response_and_writes_once(api: Api) -> None:
    b = api.branch()["id"]
    key = "key-" + new_id()
    body = {"branch_id": b, "full_name": "Once"}
    first = api.http.post("/api/clients", json=body, headers={**WHO, "Idempotency-Key": key})
    again = api.http.post("/api/clients", json=body, headers={**WHO, "Idempotency-Key": key})
    assert first.status_code == again.status_code == 201
    assert first.content == again.content
    assert first.headers["etag"] == again.headers["etag"]
    assert first.headers["location"] == again.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert api.scalar("SELECT count(*) FROM pgtide.sync_log WHERE mutation_id = %s", key) == 1

    other = api.http.post("/api/clients", json={**body, "full_name": "Twice"},
                          headers={**WHO, "Idempotency-Key": key})  # fmt: skip
    assert other.status_code == 422 and "Idempotency-Key" in problem_of(other)["detail"]
    elsewhere = api.http.delete(f"/api/clients/{first.json()['data']['id']}",
                                headers={**WHO, "Idempotency-Key": key})  # fmt: skip
    assert elsewhere.status_code == 422
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 1


def test_idempotency_covers_patch_and_delete(api: Api) -> None:
    b = api.branch()
    path = f"/api/branches/{b['id']}"
    for send in (
        lambda: api.http.patch(path, json={"city": "Bern"}, headers={"Idempotency-Key": "p1"}),
        lambda: api.http.delete(path, headers={"Idempotency-Key": "d1"}),
    ):
        first, again = send(), send()
        assert first.status_code == again.status_code == 200
        assert first.content == again.content
    assert [op for op, *_ in api.log(b["id"])] == ["INSERT", "UPDATE", "DELETE"]


def test_a_refused_write_leaves_no_key_so_a_corrected_retry_applies(api: Api) -> None:
    b = api.branch()["id"]
    headers = {"Idempotency-Key": "fix-" + new_id()}
    bad = api.http.post("/api/clients", json={"branch_id": new_id(), "full_name": "A"},
                        headers=headers)  # fmt: skip
    assert bad.status_code == 422
    good = api.http.post("/api/clients", json={"branch_id": b, "full_name": "A"}, headers=headers)
    assert good.status_code == 201


def test_the_same_key_sent_20_times_at_once_writes_once(api: Api) -> None:
    b = api.branch()["id"]
    key = "burst-" + new_id()
    barrier = threading.Barrier(20)
    results: list[httpx.Response] = []

    def send() -> None:
        with httpx.Client(base_url=api.base, timeout=30) as c:
            barrier.wait()
            results.append(c.post("/api/clients", json={"branch_id": b, "full_name": "Burst"},
                                  headers={"Idempotency-Key": key}))  # fmt: skip

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {(r.status_code, r.content) for r in results} == {(201, results[0].content)}
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 1


def test_expired_keys_are_forgotten(api: Api) -> None:
    b = api.branch()["id"]
    key = "old-" + new_id()
    body = {"branch_id": b, "full_name": "Old"}
    assert api.http.post("/api/clients", json=body, headers={"Idempotency-Key": key}).is_success
    api.sql.execute("UPDATE pgtide.sync_idempotency SET expires_at = now() - interval '1 s'"
                    " WHERE key = %s", (key,))  # fmt: skip
    r = api.http.post("/api/clients", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 201 and "idempotent-replayed" not in r.headers
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 2


# --- bad input: 4xx, and nothing changes


def _bad_requests(
    b: str, existing: str
) -> list[tuple[str, Callable[[httpx.Client], httpx.Response], int, str | None]]:
    """(name, request, status, field the problem must name)."""
    clients = "/api/clients"

    def post(body: Any) -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post(clients, json=body)

    def raw(
        content: bytes, ctype: str = "application/json"
    ) -> Callable[[httpx.Client], httpx.Response]:
        return lambda c: c.post(clients, content=content, headers={"Content-Type": ctype})

    ok = {"branch_id": b, "full_name": "Ann"}
    return [
        ("unknown field", post({**ok, "nickname": "A"}), 422, "nickname"),
        ("wrong type", post({**ok, "full_name": 42}), 422, "full_name"),
        ("null for required", post({**ok, "full_name": None}), 422, "full_name"),
        ("missing required", post({"branch_id": b}), 422, "full_name"),
        ("blank name", post({**ok, "full_name": "   "}), 422, "full_name"),
        ("bad email", post({**ok, "email": "nope"}), 422, "email"),
        ("bad uuid", post({**ok, "branch_id": "not-a-uuid"}), 422, "branch_id"),
        ("number as uuid", post({**ok, "branch_id": 7}), 422, "branch_id"),
        ("missing branch", post({**ok, "branch_id": new_id()}), 422, "branch_id"),
        ("duplicate id", post({**ok, "id": existing}), 409, None),
        ("NUL in text", post({**ok, "notes": "a\x00b"}), 422, "notes"),
        ("object as name", post({**ok, "full_name": {"$gt": ""}}), 422, "full_name"),
        ("nested garbage", post({**ok, "notes": [[[[{"a": [1, 2]}]]]]}), 422, "notes"),
        ("a string body", post("hello"), 422, None),
        ("a number body", post(5), 422, None),
        ("null body", raw(b"null"), 422, None),
        ("array of numbers", post([1, 2]), 422, None),
        ("negative quantity", lambda c: c.post("/api/stock_requests", json={
            "branch_id": b, "product_id": new_id(), "quantity": -3}), 422, "quantity"),
        ("quantity as string", lambda c: c.post("/api/stock_requests", json={
            "branch_id": b, "product_id": new_id(), "quantity": "3"}), 422, "quantity"),
        ("quantity as bool", lambda c: c.post("/api/stock_requests", json={
            "branch_id": b, "product_id": new_id(), "quantity": True}), 422, "quantity"),
        ("quantity overflow", lambda c: c.post("/api/stock_requests", json={
            "branch_id": b, "product_id": new_id(), "quantity": 2**40}), 422, "quantity"),
        ("price with 3 decimals", lambda c: c.post("/api/products", json={
            "branch_id": b, "sku": "Z", "name": "Z", "price": 1.005}), 422, "price"),
        ("price NaN", lambda c: c.post("/api/products", content=(
            f'{{"branch_id": "{b}", "sku": "Z", "name": "Z", "price": NaN}}').encode(),
            headers={"Content-Type": "application/json"}), 422, "price"),
        ("naive timestamp", lambda c: c.post("/api/appointments", json={
            "branch_id": b, "client_id": new_id(), "starts_at": "2030-01-01T10:00:00"}), 422,
         "starts_at"),
        ("bad status", lambda c: c.post("/api/orders", json={
            "branch_id": b, "client_id": new_id(), "status": "lost"}), 422, "status"),
        ("items not an array", lambda c: c.post("/api/orders", json={
            "branch_id": b, "client_id": new_id(), "items": {"a": 1}}), 422, "items"),
        ("version in body", lambda c: c.patch(f"/api/clients/{existing}", json={"version": 9}),
         422, "version"),
        ("id in patch", lambda c: c.patch(f"/api/clients/{existing}", json={"id": new_id()}),
         422, "id"),
        ("other id in put", lambda c: c.put(f"/api/clients/{existing}", json={
            **ok, "id": new_id()}), 422, "id"),
        ("null in patch", lambda c: c.patch(f"/api/clients/{existing}",
                                            json={"full_name": None}), 422, "full_name"),
        ("malformed JSON", raw(b'{"branch_id": '), 400, None),
        ("trailing comma", raw(b'{"full_name": "A",}'), 400, None),
        ("invalid UTF-8", raw(b'{"full_name": "\xff\xfe"}'), 400, None),
        ("empty body", raw(b""), 400, None),
        ("whitespace body", raw(b"   "), 400, None),
        ("form content type", raw(b"full_name=A", "application/x-www-form-urlencoded"), 415,
         None),
        ("no content type", lambda c: c.post(clients, content=b"{}", headers={
            "Content-Type": ""}), 415, None),
        ("huge body", raw(b'{"notes": "' + b"x" * (1024 * 1024 + 10) + b'"}'), 413, None),
        ("deep nesting", raw(b'{"notes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400,
         None),
        ("bad uuid in path", lambda c: c.get("/api/clients/1 OR 1=1"), 404, None),
        ("bad uuid in put path", lambda c: c.put("/api/clients/xyz", json=ok), 404, None),
        ("unknown resource", lambda c: c.post("/api/users", json=ok), 404, None),
        ("long idempotency key", lambda c: c.post(clients, json=ok, headers={
            "Idempotency-Key": "k" * 300}), 400, None),
        ("wrong method", lambda c: c.post(f"/api/clients/{existing}", json=ok), 405, None),
    ]  # fmt: skip


def test_bad_input_gets_its_4xx_naming_the_field_and_changes_nothing(api: Api) -> None:
    b = api.branch()["id"]
    existing = api.client(b)["id"]
    before = api.checksum()
    failures = []
    for name, send, status, field in _bad_requests(b, existing):
        r = send(api.http)
        if r.status_code != status:
            failures.append(f"{name}: {r.status_code} {r.text[:200]}")
            continue
        problem = problem_of(r)
        if field and field not in {e["field"] for e in problem.get("errors", [])}:
            failures.append(f"{name}: no error names {field}: {problem}")
    assert failures == []
    assert len(_bad_requests(b, existing)) >= 30
    assert api.checksum() == before


def test_a_declared_length_over_the_limit_gets_413_before_the_body_is_read(
    live: tuple[Server, str],
) -> None:
    with socket.create_connection(("127.0.0.1", live[0].port), timeout=10) as s:
        s.sendall(b"POST /api/clients HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 1000000000\r\n\r\n{}")  # fmt: skip
        head = s.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 413 ")


def test_a_check_constraint_only_the_database_knows_gets_422_naming_the_column(
    api: Api,
) -> None:
    b = api.branch()["id"]
    api.sql.execute("ALTER TABLE distributors ADD CONSTRAINT distributors_name_short"
                    " CHECK (length(name) < 20)")  # fmt: skip
    try:
        r = api.post("/api/distributors", {"branch_id": b, "name": "A name far too long here"})
    finally:
        api.sql.execute("ALTER TABLE distributors DROP CONSTRAINT distributors_name_short")
    problem = problem_of(r)
    assert r.status_code == 422 and problem["constraint"] == "distributors_name_short"
    assert [e["field"] for e in problem["errors"]] == ["name"]


def test_a_unique_violation_gets_409_and_a_referenced_row_cannot_be_deleted(api: Api) -> None:
    b = api.branch()
    api.product(b["id"], sku="DUP")
    r = api.post("/api/products", {"branch_id": b["id"], "sku": "DUP", "name": "N", "price": 1})
    assert r.status_code == 409 and "branch_id, sku" in problem_of(r)["detail"]
    r = api.post("/api/branches", {"code": b["code"], "name": "Same code"})
    assert r.status_code == 409
    r = api.http.delete(f"/api/branches/{b['id']}")
    assert r.status_code == 409 and "referenced" in problem_of(r)["detail"]


# --- listing


def test_list_filters_search_order_and_keyset_pages(api: Api) -> None:
    b = api.branch()["id"]
    names = ["Ann 100%", "Bob_x", "bobby", "Carl", "Dora", "Eve", "Fay"]
    for i, n in enumerate(names):
        api.created("clients", {"branch_id": b, "full_name": n, "notes": f"n{i % 2}"})

    def names_of(params: dict[str, str]) -> list[str]:
        r = api.http.get("/api/clients", params={"branch_id": f"eq.{b}", **params})
        assert r.status_code == 200, r.text
        return [x["full_name"] for x in r.json()["data"]]

    in_sql = [
        r[0]
        for r in api.sql.execute(
            "SELECT full_name FROM clients WHERE branch_id = %s ORDER BY full_name DESC", (b,)
        )
    ]
    assert names_of({"order": "full_name.desc"}) == in_sql  # the database's collation
    assert sorted(in_sql) == sorted(names)
    assert names_of({"search": "BOB", "order": "full_name"}) == ["Bob_x", "bobby"]
    assert names_of({"search": "b_x"}) == ["Bob_x"]  # _ is literal
    assert names_of({"search": "%"}) == ["Ann 100%"]  # so is %
    assert names_of({"search": "\\"}) == []
    assert sorted(names_of({"notes": "eq.n1"})) == ["Bob_x", "Carl", "Eve"]
    assert sorted(names_of({"notes": "in.(n0,zz)", "full_name": "neq.Dora"})) == [
        "Ann 100%", "Fay", "bobby"]  # fmt: skip
    assert names_of({"email": "is.null", "full_name": "lt.B"}) == ["Ann 100%"]

    seen: list[str] = []
    url: str | None = f"/api/clients?branch_id=eq.{b}&order=created_at.desc,full_name&limit=3"
    pages = 0
    while url:
        r = api.http.get(url)
        assert r.status_code == 200, r.text
        seen += [x["full_name"] for x in r.json()["data"]]
        url = r.json()["next"]
        assert (url is None) == ("link" not in r.headers)
        pages += 1
    assert pages == 3 and sorted(seen) == sorted(names) and len(seen) == len(set(seen))


def test_list_refuses_bad_parameters_with_400(api: Api) -> None:
    for params in (
        {"nosuch": "eq.1"}, {"full_name": "like.A"}, {"branch_id": "eq.zzz"},
        {"version": "gt.abc"}, {"created_at": "lt.yesterday"}, {"order": "notes"},
        {"order": "full_name.sideways"}, {"order": "id,id"}, {"limit": "0"}, {"limit": "501"},
        {"limit": "ten"}, {"after": "garbage"}, {"after": "eyJvIjoiaWQuYXNjIn0"},
        {"email": "is.maybe"}, {"email": "is.true"}, {"full_name": "in.(a"},
    ):  # fmt: skip
        r = api.http.get("/api/clients", params=params)
        assert r.status_code == 400, (params, r.text)
        problem_of(r)


def test_a_cursor_only_works_with_the_order_it_was_made_for(api: Api) -> None:
    b = api.branch()["id"]
    for _ in range(3):
        api.client(b)
    r = api.http.get("/api/clients", params={"branch_id": f"eq.{b}", "limit": "1"})
    after = r.json()["next"].rsplit("after=", 1)[1]
    r = api.http.get("/api/clients", params={"order": "full_name", "after": after})
    assert r.status_code == 400 and "order" in problem_of(r)["detail"]


@pytest.mark.parametrize(
    "params",
    [
        {"search": "' OR 1=1 --"}, {"search": "%' ; DROP TABLE clients; --"},
        {"full_name": "eq.' OR '1'='1"}, {"full_name": "in.(a','b); DELETE FROM clients; --)"},
        {"order": "full_name; DROP TABLE clients"}, {"order": "(SELECT 1)"},
        {"order": "full_name.asc NULLS FIRST"}, {'full_name"; --': "eq.x"},
        {"branch_id": "eq.00000000-0000-0000-0000-000000000000' OR 1=1"},
        {"limit": "1; DELETE FROM clients"}, {"version": "gt.1 OR 1=1"},
        {"search": "\x00"},
    ],
)  # fmt: skip
def test_injection_attempts_change_nothing_and_find_nothing(
    api: Api, params: dict[str, str]
) -> None:
    b = api.branch()["id"]
    api.client(b)
    before = api.checksum()
    r = api.http.get("/api/clients", params=params)
    assert r.status_code == 400 or (r.status_code == 200 and r.json()["data"] == [])
    assert api.checksum() == before


# --- the rest of the contract


def test_openapi_describes_every_resource_route(api: Api) -> None:
    doc = api.http.get("/openapi.json").json()
    for resource in RESOURCES:
        assert set(doc["paths"][f"/api/{resource}"]) == {"get", "post"}
        assert set(doc["paths"][f"/api/{resource}/{{id}}"]) == {"get", "put", "patch", "delete"}
    assert "post" in doc["paths"]["/api/sync/push"]
    schemas = doc["components"]["schemas"]
    assert schemas["Product"]["additionalProperties"] is False
    assert "price" in schemas["Product"]["required"]

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from ([v] if k == "$ref" else refs(v))
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    found = set(refs(doc))
    assert found and {r.rsplit("/", 1)[1] for r in found} <= set(schemas)


# --- tokens: the actor, and branch pins


@pytest.fixture(scope="module")
def pinned(live: tuple[Server, str]) -> Iterator[dict[str, Any]]:
    """A server with auth on, two branches with a client each, and tokens."""
    _, url = live
    with db.connect(url) as conn:
        a, b = (str(conn.execute("INSERT INTO branches (code, name) VALUES (%s, %s) RETURNING id",
                                 (code, code)).fetchone()[0])  # type: ignore[index]
                for code in ("PIN-A", "PIN-B"))  # fmt: skip
        ca, cb = (str(conn.execute("INSERT INTO clients (branch_id, full_name) VALUES (%s, 'C')"
                                   " RETURNING id", (x,)).fetchone()[0])  # type: ignore[index]
                  for x in (a, b))  # fmt: skip

        def token(name: str, scopes: str, branch: str | None = None) -> dict[str, str]:
            t = tokens.create(conn, name=name, scopes=tokens.parse_scopes(scopes),
                              branch_id=branch, expires_in=None, pepper=None)  # fmt: skip
            return {"Authorization": f"Bearer {t}"}

        ctx = {"a": a, "b": b, "ca": ca, "cb": cb, "admin": token("hq", "admin"),
               "pin": token("tablet-a", "read,write", a),
               "reader": token("viewer", "read")}  # fmt: skip
    srv = Server(url, auth=True).start()
    ctx["http"] = httpx.Client(base_url=srv.base, timeout=30)
    yield ctx
    ctx["http"].close()
    srv.stop()


def test_with_a_token_the_actor_is_the_token_name_whatever_the_header_says(
    api: Api, pinned: dict[str, Any]
) -> None:
    http: httpx.Client = pinned["http"]
    r = http.post("/api/clients", json={"branch_id": pinned["b"], "full_name": "By HQ"},
                  headers={**pinned["admin"], "X-Pgtide-Actor": "mallory"})  # fmt: skip
    assert r.status_code == 201
    assert api.log(r.json()["data"]["id"])[0][1] == "hq"
    r = http.post("/api/clients", json={"branch_id": pinned["b"], "full_name": "X"},
                  headers=pinned["reader"])  # fmt: skip
    assert r.status_code == 403


def test_a_branch_pinned_token_reads_and_writes_only_its_branch(
    api: Api, pinned: dict[str, Any]
) -> None:
    http: httpx.Client = pinned["http"]
    pin = pinned["pin"]
    a, b, ca, cb = pinned["a"], pinned["b"], pinned["ca"], pinned["cb"]
    before = api.checksum()
    refused = [
        (http.post("/api/clients", json={"branch_id": b, "full_name": "X"}, headers=pin), 403),
        (http.post("/api/clients", json=[{"branch_id": a, "full_name": "X"},
                                         {"branch_id": b, "full_name": "Y"}], headers=pin), 403),
        (http.patch(f"/api/clients/{ca}", json={"branch_id": b}, headers=pin), 403),
        (http.put(f"/api/clients/{ca}", json={"branch_id": b, "full_name": "Z"}, headers=pin),
         403),
        (http.get(f"/api/clients/{cb}", headers=pin), 404),
        (http.patch(f"/api/clients/{cb}", json={"notes": "x"}, headers=pin), 404),
        (http.patch(f"/api/clients/{cb}", json={"notes": "x"},
                    headers={**pin, "If-Match": '"9"'}), 404),
        (http.delete(f"/api/clients/{cb}", headers=pin), 404),
        (http.post("/api/branches", json={"code": "NOPE", "name": "N"}, headers=pin), 403),
        (http.patch(f"/api/branches/{a}", json={"city": "X"}, headers=pin), 403),
        (http.delete(f"/api/branches/{a}", headers=pin), 403),
        (http.get(f"/api/branches/{b}", headers=pin), 404),
    ]  # fmt: skip
    assert [r.status_code for r, _ in refused] == [s for _, s in refused]
    assert all(set(r.json()) == {"type", "title", "status", "detail", "code"} for r, _ in refused)
    assert api.checksum() == before

    # Its own branch's row it reads (the branch app shows its name), and no other.
    branches = http.get("/api/branches", headers=pin).json()["data"]
    assert [(r["id"], r["code"]) for r in branches] == [(a, "PIN-A")]
    assert http.get(f"/api/branches/{a}", headers=pin).json()["data"]["name"] == "PIN-A"

    listed = http.get("/api/clients", params={"branch_id": f"in.({a},{b})"}, headers=pin)
    assert {c["branch_id"] for c in listed.json()["data"]} == {a}
    assert http.get("/api/clients", params={"branch_id": f"eq.{b}"},
                    headers=pin).json()["data"] == []  # fmt: skip
    assert http.patch(f"/api/clients/{ca}", json={"notes": "ok"}, headers=pin).status_code == 200
    results = http.post("/api/sync/push", headers=pin, json={"mutations": [
        {"mutation_id": new_id(), "resource": "clients", "op": "update", "id": cb,
         "data": {"notes": "x"}, "base_version": 1},
        {"mutation_id": new_id(), "resource": "clients", "op": "insert", "id": new_id(),
         "data": {"branch_id": b, "full_name": "X"}},
        {"mutation_id": new_id(), "resource": "clients", "op": "insert", "id": new_id(),
         "data": {"branch_id": a, "full_name": "In A"}},
    ]}).json()["results"]  # fmt: skip
    assert [r["status"] for r in results] == ["conflict", "rejected", "applied"]
    assert results[0]["row"] is None  # another branch's row does not exist for this token
