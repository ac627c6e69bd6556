"""POST /api/sync/push: an offline client's queued mutations, against a real server."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from tests.live import Server, problem_of
from tests.writing import Api, new_id


def push(api: Api, mutations: list[Any], policy: str = "version", **extra: Any) -> list[Any]:
    r = api.post("/api/sync/push", {"client_id": "tablet-3", "policy": policy,
                                    "mutations": mutations, **extra})  # fmt: skip
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    assert [x["index"] for x in results] == list(range(len(mutations)))
    return results


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in results]


def mutation(op: str, resource: str, id: str, data: Any = None, **more: Any) -> dict[str, Any]:
    return {"mutation_id": new_id(), "resource": resource, "op": op, "id": id, "data": data,
            **more}  # fmt: skip


def test_mutations_apply_in_order_and_a_resend_reports_duplicates(api: Api) -> None:
    b = api.branch()["id"]
    cid = new_id()
    queue = [
        mutation("insert", "clients", cid, {"branch_id": b, "full_name": "Offline Ann"}),
        mutation("update", "clients", cid, {"notes": "met at the fair"}, base_version=1),
        mutation("update", "clients", cid, {"email": "ann@example.com"}, base_version=2),
    ]
    first = push(api, queue)
    assert statuses(first) == ["applied"] * 3
    assert first[2]["row"]["version"] == 3 and first[2]["row"]["notes"] == "met at the fair"
    before = api.checksum()

    again = push(api, queue)

    assert statuses(again) == ["duplicate"] * 3
    assert [r["txid"] for r in again] == [r["txid"] for r in first]
    assert api.checksum() == before
    log = api.log(cid)
    ops = ["INSERT", "UPDATE", "UPDATE"]
    assert [(op, origin, mid) for op, _, origin, mid, _ in log] == [
        (op, "tablet-3", m["mutation_id"]) for op, m in zip(ops, queue, strict=True)
    ]
    assert [txid for *_, txid in log] == [r["txid"] for r in first]


def test_a_push_resent_in_pieces_to_another_server_process_applies_each_mutation_once(
    api: Api, live: tuple[Server, str]
) -> None:
    b = api.branch()["id"]
    queue = [mutation("insert", "clients", new_id(), {"branch_id": b, "full_name": f"C{i}"})
             for i in range(6)]  # fmt: skip
    assert statuses(push(api, queue[:2])) == ["applied"] * 2
    other = Server(live[1]).start()  # a fresh process: what it knows comes from the database
    try:
        # The same sender (client_id; auth is off): its ids are its own namespace.
        body = {"client_id": "tablet-3", "mutations": queue[:4]}
        r = httpx.post(f"{other.base}/api/sync/push", json=body, timeout=30)
        assert statuses(r.json()["results"]) == ["duplicate"] * 2 + ["applied"] * 2
    finally:
        other.stop()
    assert statuses(push(api, queue)) == ["duplicate"] * 4 + ["applied"] * 2
    assert statuses(push(api, queue)) == ["duplicate"] * 6
    assert api.scalar("SELECT count(*) FROM clients WHERE branch_id = %s", b) == 6


def test_the_same_push_sent_twice_at_once_applies_each_mutation_exactly_once(api: Api) -> None:
    b = api.branch()["id"]
    pid = new_id()
    queue = [
        mutation(
            "insert",
            "products",
            pid,
            {"branch_id": b, "sku": "S", "name": "Gauze", "price": 2, "stock": 0},
        )
    ]
    queue += [mutation("update", "products", pid, {"stock": n}, base_version=n)
              for n in range(1, 11)]  # fmt: skip
    barrier = threading.Barrier(2)
    answers: list[list[dict[str, Any]]] = []

    def send() -> None:
        with httpx.Client(base_url=api.base, timeout=30) as c:
            barrier.wait()
            r = c.post("/api/sync/push", json={"policy": "version", "mutations": queue})
            answers.append(r.json()["results"])

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 2
    for i in range(len(queue)):
        assert sorted(a[i]["status"] for a in answers) == ["applied", "duplicate"], i
    assert api.scalar("SELECT stock FROM products WHERE id = %s", pid) == 10
    assert len(api.log(pid)) == 11


def test_a_version_conflict_returns_the_current_row_and_changes_nothing(api: Api) -> None:
    b = api.branch()
    path = f"/api/branches/{b['id']}"
    assert api.http.patch(path, json={"city": "Server city"}).status_code == 200
    before = api.checksum()
    mid = new_id()
    (result,) = push(api, [{"mutation_id": mid, "resource": "branches", "op": "update",
                            "id": b["id"], "data": {"city": "Offline city"},
                            "base_version": 1}])  # fmt: skip
    assert result["status"] == "conflict"
    assert result["row"]["city"] == "Server city" and result["row"]["version"] == 2
    assert api.checksum() == before
    # A conflict is not remembered: resent on the current version, it applies.
    (result,) = push(api, [{"mutation_id": mid, "resource": "branches", "op": "update",
                            "id": b["id"], "data": {"city": "Offline city"},
                            "base_version": 2}])  # fmt: skip
    assert result["status"] == "applied" and result["row"]["city"] == "Offline city"


def test_version_conflicts_on_deleted_and_existing_rows(api: Api) -> None:
    b = api.branch()
    gone = api.branch()
    assert api.http.delete(f"/api/branches/{gone['id']}").status_code == 200
    results = push(api, [
        mutation("delete", "branches", gone["id"], base_version=1),
        mutation("update", "branches", gone["id"], {"city": "X"}, base_version=1),
        mutation("insert", "branches", b["id"], {"code": "NEW1", "name": "N"}),
    ])  # fmt: skip
    assert statuses(results) == ["conflict"] * 3
    assert results[0]["row"] is None and results[1]["row"] is None
    assert results[2]["row"]["id"] == b["id"]


def test_lww_keeps_the_write_with_the_later_client_timestamp(api: Api) -> None:
    b = api.branch()
    rid = b["id"]

    def lww(city: str, ts: str) -> dict[str, Any]:
        (r,) = push(api, [mutation("update", "branches", rid, {"city": city}, client_ts=ts)],
                    policy="lww")  # fmt: skip
        return r

    # The branch was created through the API just now: a write timed a year ago is older.
    assert lww("Long ago", "2020-01-01T00:00:00Z")["status"] == "conflict"
    assert lww("Future 2", "2099-01-01T10:00:02Z")["status"] == "applied"
    late = lww("Future 1", "2099-01-01T10:00:01Z")  # arrives later, made earlier
    assert late["status"] == "conflict" and late["row"]["city"] == "Future 2"
    assert lww("Same time", "2099-01-01T10:00:02Z")["status"] == "conflict"  # ties keep the row
    assert lww("Future 3", "2099-01-01T12:00:02+02:00")["status"] == "conflict"  # same instant
    assert lww("Future 4", "2099-01-01T10:00:03Z")["status"] == "applied"
    assert api.scalar("SELECT city FROM branches WHERE id = %s", rid) == "Future 4"


def test_lww_a_write_through_the_api_since_the_last_push_counts_at_its_time(api: Api) -> None:
    b = api.branch()
    (r,) = push(api, [mutation("update", "branches", b["id"], {"city": "Pushed"},
                               client_ts="2000-01-01T00:00:00Z")], policy="lww")  # fmt: skip
    assert r["status"] == "conflict"  # the row's updated_at (now) is later than 2000
    (r,) = push(api, [mutation("update", "branches", b["id"], {"city": "Pushed"},
                               client_ts="2099-01-01T00:00:00Z")], policy="lww")  # fmt: skip
    assert r["status"] == "applied"
    assert api.http.patch(f"/api/branches/{b['id']}", json={"city": "Via API"}).is_success
    # The push clock (2099) no longer speaks for the row: the API write's time (now) does.
    (r,) = push(api, [mutation("update", "branches", b["id"], {"city": "Pushed again"},
                               client_ts="2098-01-01T00:00:00Z")], policy="lww")  # fmt: skip
    assert r["status"] == "applied"


def test_lww_a_delete_then_a_late_update_or_insert_does_not_resurrect(api: Api) -> None:
    b = api.branch()["id"]
    did = new_id()
    results = push(api, [
        mutation("insert", "distributors", did, {"branch_id": b, "name": "D"},
                 client_ts="2099-01-01T10:00:00Z"),
        mutation("delete", "distributors", did, client_ts="2099-01-01T10:05:00Z"),
        mutation("update", "distributors", did, {"name": "Late"},
                 client_ts="2099-01-01T10:01:00Z"),
        mutation("insert", "distributors", did, {"branch_id": b, "name": "Late again"},
                 client_ts="2099-01-01T10:02:00Z"),
        mutation("update", "distributors", did, {"name": "After"},
                 client_ts="2099-01-01T11:00:00Z"),
    ], policy="lww")  # fmt: skip
    assert statuses(results) == ["applied", "applied", "conflict", "conflict", "conflict"]
    assert results[2]["row"] is None
    assert api.scalar("SELECT count(*) FROM distributors WHERE id = %s", did) == 0
    # Re-created by a later insert, it exists again.
    (r,) = push(api, [mutation("insert", "distributors", did, {"branch_id": b, "name": "New"},
                               client_ts="2099-01-01T12:00:00Z")], policy="lww")  # fmt: skip
    assert r["status"] == "applied"


def test_a_rejected_mutation_does_not_stop_the_following_ones(api: Api) -> None:
    b = api.branch()["id"]
    cid, pid = new_id(), new_id()
    results = push(api, [
        mutation("insert", "clients", cid, {"branch_id": b, "full_name": "Kept"}),
        mutation("insert", "clients", new_id(), {"branch_id": b, "full_name": 5}),
        mutation("insert", "clients", new_id(), {"branch_id": new_id(), "full_name": "No FK"}),
        mutation("insert", "warehouses", new_id(), {"name": "?"}),
        mutation("update", "clients", cid, {"notes": "x"}),  # no base_version
        mutation("explode", "clients", cid, {}),
        {"resource": "clients", "op": "delete", "id": cid},  # no mutation id
        "not even an object",
        mutation("insert", "products", pid, {"branch_id": b, "sku": "K", "name": "Kept too",
                                             "price": 3}),
        mutation("insert", "products", new_id(), {"branch_id": b, "sku": "K", "name": "Dup",
                                                   "price": 3}),
        mutation("update", "clients", cid, {"notes": "y"}, base_version=1),
    ])  # fmt: skip
    assert statuses(results) == [
        "applied", "rejected", "rejected", "rejected", "rejected", "rejected", "rejected",
        "rejected", "applied", "rejected", "applied",
    ]  # fmt: skip
    assert {e["field"] for e in results[1]["errors"]} == {"data.full_name"}
    assert {e["field"] for e in results[2]["errors"]} == {"branch_id"}
    assert "warehouses" in results[3]["detail"]
    assert "base_version" in results[4]["detail"]
    assert {e["field"] for e in results[6]["errors"]} == {"mutation_id"}
    assert "already exists" in results[9]["detail"]
    assert results[10]["row"]["notes"] == "y"


def test_a_rejected_mutation_can_be_corrected_and_resent_with_its_id(api: Api) -> None:
    b = api.branch()["id"]
    m = mutation("insert", "clients", new_id(), {"branch_id": b, "full_name": " "})
    assert statuses(push(api, [m])) == ["rejected"]
    m["data"]["full_name"] = "Fixed"
    assert statuses(push(api, [m])) == ["applied"]


def test_a_malformed_push_is_refused_as_a_whole(api: Api) -> None:
    for body, status in (
        ({"policy": "newest", "mutations": []}, 422),
        ({"mutations": "all of them"}, 422),
        ({"policy": "lww"}, 422),
        ({"policy": "lww", "mutations": [], "extra": 1}, 422),
        ([], 422),
    ):
        r = api.post("/api/sync/push", body)
        assert r.status_code == status, (body, r.text)
        problem_of(r)
    r = api.http.post("/api/sync/push", content=b"{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = api.post("/api/sync/push", {"mutations": [mutation("delete", "clients", new_id())]},
                 **{"X-Pgtide-Origin": "o" * 500})  # fmt: skip
    assert r.status_code == 400


def test_lww_needs_client_ts(api: Api) -> None:
    b = api.branch()
    (r,) = push(api, [mutation("update", "branches", b["id"], {"city": "X"})], policy="lww")
    assert r["status"] == "rejected" and "client_ts" in r["detail"]


def test_mutation_ids_expire_and_a_resend_after_that_is_found_in_the_log(api: Api) -> None:
    b = api.branch()["id"]
    cid = new_id()
    queue = [
        mutation("insert", "clients", cid, {"branch_id": b, "full_name": "Old Ann"}),
        mutation("update", "clients", cid, {"notes": "once"}, base_version=1),
    ]
    first = push(api, queue)
    assert statuses(first) == ["applied"] * 2
    ids = [m["mutation_id"] for m in queue]
    api.sql.execute(
        "UPDATE pgtide.sync_mutations SET applied_at = now() - interval '31 days' "
        "WHERE mutation_id = ANY (%s)", (ids,),
    )  # fmt: skip
    # Older than PGTIDE_MUTATION_TTL (30 days): the next push forgets them.
    push(api, [mutation("insert", "clients", new_id(), {"branch_id": b, "full_name": "N"})])
    left = "SELECT count(*) FROM pgtide.sync_mutations WHERE mutation_id = ANY (%s)"
    assert api.scalar(left, ids) == 0
    before = api.checksum()

    again = push(api, queue)

    assert statuses(again) == ["duplicate"] * 2  # not a conflict, and not a second write
    assert [r["txid"] for r in again] == [r["txid"] for r in first]
    assert api.checksum() == before
    # Another sender's ids are not this sender's, in the log as in sync_mutations.
    r = api.post("/api/sync/push", {"client_id": "tablet-9", "mutations": queue[1:]})
    assert statuses(r.json()["results"]) == ["conflict"]
