"""Every route and every kind of token gets the right status; branch A cannot reach B.

The expected status comes from a table written by hand (EXPECTED below), not
from the code under test.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from api.auth import CACHE_S
from cdc import db, tokens
from tests.auth import World
from tests.live import Server, Stream
from tests.sequencing import wait_until_sequenced

KINDS = ["none", "bad", "expired", "revoked", "read", "write", "audit", "admin", "A", "B"]


def row(*codes: int) -> dict[str, int]:
    """Expected statuses in the order of KINDS."""
    return dict(zip(KINDS, codes, strict=True))


# route -> expected status per kind; the row used is always branch A's. PUT as B
# is 403, not 404: its body names branch A, which B may not write (checked first).
EXPECTED: dict[str, dict[str, int]] = {
    #                      none bad  exp  rev  read write audit admin  A    B
    "GET /health":        row(200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /openapi.json":  row(200, 200, 200, 200, 200, 200, 200, 200, 200, 200),
    "GET /events":        row(401, 401, 401, 401, 200, 403, 403, 200, 200, 200),
    "GET list":           row(401, 401, 401, 401, 200, 403, 403, 200, 200, 200),
    "GET one":            row(401, 401, 401, 401, 200, 403, 403, 200, 200, 404),
    "POST one":           row(401, 401, 401, 401, 403, 201, 403, 201, 201, 403),
    "PATCH one":          row(401, 401, 401, 401, 403, 200, 403, 200, 200, 404),
    "PUT one":            row(401, 401, 401, 401, 403, 200, 403, 200, 200, 403),
    "DELETE one":         row(401, 401, 401, 401, 403, 200, 403, 200, 200, 404),
    "POST push":          row(401, 401, 401, 401, 403, 200, 403, 200, 200, 200),
    "GET sync-log":       row(401, 401, 401, 401, 403, 403, 200, 200, 403, 403),
    "GET history":        row(401, 401, 401, 401, 403, 403, 200, 200, 403, 403),
}  # fmt: skip


def status_of(w: World, kind: str, route: str) -> int:
    """The status `route` answers a request with a token of `kind` (a fresh row of A's)."""
    base, h = w.server.base, w.headers(kind)
    a = w.branch["A"]
    with httpx.Client(base_url=base, headers=h, timeout=10) as c:
        if route == "GET /health":
            return c.get("/health").status_code
        if route == "GET /openapi.json":
            return c.get("/openapi.json").status_code
        if route == "GET /events":
            with c.stream("GET", "/events") as r:
                return r.status_code
        if route == "GET list":
            return c.get("/api/clients").status_code
        if route == "POST one":
            return c.post("/api/clients", json={"branch_id": a, "full_name": "New"}).status_code
        if route == "POST push":
            body = {"policy": "version", "mutations": [{
                "mutation_id": str(uuid.uuid4()), "resource": "clients", "op": "insert",
                "id": str(uuid.uuid4()), "data": {"branch_id": a, "full_name": "Pushed"},
            }]}  # fmt: skip
            return c.post("/api/sync/push", json=body).status_code
        if route == "GET sync-log":
            return c.get("/api/sync-log").status_code
        cid = w.new_client()
        if route == "GET one":
            return c.get(f"/api/clients/{cid}").status_code
        if route == "GET history":
            wait_until_sequenced(w.url, timeout=10)  # history reads sequenced changes
            return c.get(f"/api/clients/{cid}/history").status_code
        if route == "PATCH one":
            return c.patch(f"/api/clients/{cid}", json={"notes": "x"}).status_code
        if route == "PUT one":
            body = {"branch_id": a, "full_name": "Put"}
            return c.put(f"/api/clients/{cid}", json=body).status_code
        if route == "DELETE one":
            return c.delete(f"/api/clients/{cid}").status_code
    raise AssertionError(route)


def test_every_route_and_token_kind_gets_the_right_status(world: World) -> None:
    wrong = []
    for route, per_kind in EXPECTED.items():
        for kind in KINDS:
            got = status_of(world, kind, route)
            if got != per_kind[kind]:
                wrong.append(f"{route} as {kind}: {got}, expected {per_kind[kind]}")
    assert not wrong, "\n".join(wrong)


def test_branch_a_cannot_read_or_change_branch_b_by_any_route(world: World) -> None:
    b_client = world.new_client("B", "secret-b")
    a_client = world.new_client("A", "ann")
    b = world.branch["B"]
    with db.connect(world.url) as conn:
        before = conn.execute(
            "SELECT to_jsonb(c) FROM clients c WHERE branch_id = %s ORDER BY id", (b,)
        ).fetchall()
    seen: list[str] = []
    h = world.headers("A")
    with httpx.Client(base_url=world.server.base, headers=h, timeout=10) as c:
        attempts: list[Callable[[], httpx.Response]] = [
            lambda: c.get(f"/api/clients?branch_id=eq.{b}"),
            lambda: c.get("/api/clients?search=secret"),
            lambda: c.get(f"/api/clients/{b_client}"),
            lambda: c.get(f"/api/clients/{b_client}/history"),
            lambda: c.get(f"/api/sync-log?table=clients&pk={b_client}"),
            lambda: c.patch(f"/api/clients/{b_client}", json={"notes": "pwned"}),
            lambda: c.put(f"/api/clients/{b_client}", json={"branch_id": b, "full_name": "x"}),
            lambda: c.delete(f"/api/clients/{b_client}"),
            lambda: c.patch(f"/api/clients/{a_client}", json={"branch_id": b}),
            lambda: c.post("/api/clients", json={"branch_id": b, "full_name": "planted"}),
            lambda: c.post(
                "/api/clients",
                json=[
                    {"branch_id": world.branch["A"], "full_name": "ok"},
                    {"branch_id": b, "full_name": "planted"},
                ],
            ),
            lambda: c.post(
                "/api/sync/push",
                json={
                    "policy": "lww",
                    "mutations": [
                        {
                            "mutation_id": "m1",
                            "resource": "clients",
                            "op": "update",
                            "id": b_client,
                            "data": {"notes": "pwned"},
                            "client_ts": "2999-01-01T00:00:00+00:00",
                        },
                        {
                            "mutation_id": "m2",
                            "resource": "clients",
                            "op": "insert",
                            "id": str(uuid.uuid4()),
                            "data": {"branch_id": b, "full_name": "planted"},
                        },
                        {
                            "mutation_id": "m3",
                            "resource": "clients",
                            "op": "delete",
                            "id": b_client,
                        },
                    ],
                },
            ),
        ]
        for attempt in attempts:
            r = attempt()
            seen.append(r.text)
            assert r.status_code < 500, r.text
    s = Stream(world.server.base, f"/events?tables=clients&since=earliest&branch_id=eq.{b}", h)
    seen.append(json.dumps(s.until("synced")))
    s.close()
    # An id the attacker sent may be echoed in a 404; B's data never appears.
    everything = "\n".join(seen)
    assert "secret-b" not in everything and "pwned" not in everything
    rows_of_b = [r for text in seen for r in _dicts(text) if r.get("branch_id") == b]
    assert rows_of_b == []
    with db.connect(world.url) as conn:
        after = conn.execute(
            "SELECT to_jsonb(c) FROM clients c WHERE branch_id = %s ORDER BY id", (b,)
        ).fetchall()
        moved = conn.execute("SELECT branch_id::text FROM clients WHERE id = %s", (a_client,))
        assert moved.fetchone() == (world.branch["A"],)
    assert after == before


def _dicts(text: str) -> list[dict[str, Any]]:
    """Every JSON object inside a response body (none if it is not JSON)."""
    try:
        doc = json.loads(text)
    except ValueError:
        return []
    out: list[dict[str, Any]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            out.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def test_pinned_tokens_lists_and_pages_hold_only_their_branch(world: World) -> None:
    for i in range(5):
        world.new_client("A", f"a{i}")
        world.new_client("B", f"b{i}")
    ids: list[str] = []
    url: str | None = "/api/clients?limit=2"
    with httpx.Client(base_url=world.server.base, headers=world.headers("A"), timeout=10) as c:
        while url:
            body: dict[str, Any] = c.get(url).json()
            ids += [r["id"] for r in body["data"]]
            assert all(r["branch_id"] == world.branch["A"] for r in body["data"])
            url = body.get("next")
    assert len(ids) == 5 == len(set(ids))


def test_a_token_that_expires_is_refused_within_the_cache_time(db_url: str) -> None:
    with db.connect(db_url) as conn:
        token = tokens.create(
            conn, name="short", scopes=("read",), branch_id=None,
            expires_in=timedelta(days=1), pepper=None,
        )  # fmt: skip
    srv = Server(db_url, auth=True).start()
    try:
        h = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{srv.base}/api/clients", headers=h).status_code == 200
        with db.connect(db_url) as conn:
            conn.execute("UPDATE pgtide.sync_tokens SET expires_at = now() WHERE name = 'short'")
        # A cached answer may stand for CACHE_S (2 s); after that it must be refused.
        deadline = time.monotonic() + 2 * CACHE_S + 1
        with httpx.Client(timeout=5) as c:
            while c.get(f"{srv.base}/api/clients", headers=h).status_code != 401:
                assert time.monotonic() < deadline, "an expired token stayed valid"
                time.sleep(0.1)  # the cache's clock, not an event, decides here
    finally:
        srv.stop()
