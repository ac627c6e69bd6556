"""Limits against hostile clients (issue 13): requests per token, made-up tokens, /metrics.

Over a real server; the cache and the buckets also on their own, with a made-up clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from api.auth import CACHE_S, UNKNOWN_BURST, Principal, TokenCache
from api.ratelimit import Buckets
from tests.auth import make_token
from tests.live import Server, problem_of


@pytest.fixture
def two_tokens(db_url: str) -> tuple[str, str]:
    return make_token(db_url, "greedy", "read"), make_token(db_url, "patient", "read")


def test_one_token_past_its_rate_gets_429_and_others_go_on(
    db_url: str, two_tokens: tuple[str, str]
) -> None:
    greedy, patient = two_tokens
    env = {"PGTIDE_RATE_LIMIT_PER_S": "0.5", "PGTIDE_RATE_LIMIT_BURST": "5"}
    srv = Server(db_url, env=env, auth=True).start()
    try:
        with httpx.Client(base_url=srv.base, timeout=10) as c:
            h = {"Authorization": f"Bearer {greedy}"}
            codes = [c.get("/api/clients?limit=1", headers=h).status_code for _ in range(8)]
            assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}, codes
            r = c.get("/api/clients?limit=1", headers=h)
            assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
            assert "PGTIDE_RATE_LIMIT_PER_S" in problem_of(r)["detail"]
            with c.stream("GET", "/events", headers=h) as stream:  # streams count too
                assert stream.status_code == 429
            other = {"Authorization": f"Bearer {patient}"}
            assert c.get("/api/clients?limit=1", headers=other).status_code == 200
            assert c.get("/health").status_code == 200  # public routes are not limited
            assert c.get("/ready").status_code == 200
    finally:
        srv.stop()


def test_without_auth_the_limit_is_per_client_address(db_url: str) -> None:
    env = {"PGTIDE_RATE_LIMIT_PER_S": "0.5", "PGTIDE_RATE_LIMIT_BURST": "3"}
    srv = Server(db_url, env=env).start()
    try:
        with httpx.Client(base_url=srv.base, timeout=10) as c:
            codes = [c.get("/api/clients?limit=1").status_code for _ in range(5)]
            assert codes == [200, 200, 200, 429, 429]
            assert "client address" in problem_of(c.get("/api/clients"))["detail"]
    finally:
        srv.stop()


@pytest.fixture
def auth_server(db_url: str) -> Iterator[tuple[Server, str]]:
    token = make_token(db_url, "reader", "read")
    srv = Server(db_url, auth=True).start()
    yield srv, token
    srv.stop()


def test_made_up_tokens_cost_a_bounded_number_of_lookups(auth_server: tuple[Server, str]) -> None:
    srv, _ = auth_server
    with httpx.Client(base_url=srv.base, timeout=10) as c:

        def status(tok: str) -> int:
            return c.get("/api/clients?limit=1", headers={"Authorization": f"Bearer {tok}"}
                         ).status_code  # fmt: skip

        # Not of the form a token has: refused without a lookup, however many.
        malformed = ["x", "pgt_short", "pgt_" + "!" * 43, "pgt_" + "a" * 44, "Bearer"]
        assert {status(t + str(i)) for i in range(40) for t in malformed} == {401}
        # The same unknown token again and again: one lookup, then the cache answers.
        assert {status("pgt_" + "u" * 43) for _ in range(3 * UNKNOWN_BURST)} == {401}
        # Distinct well-formed made-up tokens: the address's budget runs out, then 429.
        codes = [status(f"pgt_{i:043d}") for i in range(2 * UNKNOWN_BURST)]
        assert codes[: UNKNOWN_BURST - 1] == [401] * (UNKNOWN_BURST - 1)
        assert codes[-1] == 429
        # Malformed ones never reached a lookup, so they are still a plain 401.
        assert status("pgt_nope") == 401


def test_the_token_cache_is_lru_and_unknown_tokens_never_evict_valid_ones() -> None:
    cache = TokenCache(max_entries=3)
    alice = Principal(1, "alice", frozenset({"read"}))
    cache.put(b"alice", alice, 0.0)
    for i in range(100):  # a flood of made-up tokens
        cache.put(f"bad{i}".encode(), None, 0.0)
    assert cache.get(b"alice", 1.0) == (True, alice)
    assert len(cache.unknown) == 3 and cache.get(b"bad99", 1.0) == (True, None)
    for name in (b"b", b"c"):
        cache.put(name, Principal(2, name.decode(), frozenset()), 0.0)
    cache.get(b"alice", 1.0)  # used: the least recently used is now "b"
    cache.put(b"d", Principal(3, "d", frozenset()), 0.0)
    assert set(cache.valid) == {b"alice", b"c", b"d"}
    assert cache.get(b"alice", CACHE_S + 0.1) == (False, None)  # it expires all the same
    cache.evict({1})
    assert b"alice" not in cache.valid


def test_buckets_refill_at_their_rate_and_forget_the_least_recently_used() -> None:
    b = Buckets(rate=2.0, burst=3, max_keys=2)
    assert [b.take("k", 0.0) for _ in range(3)] == [0.0] * 3
    assert b.take("k", 0.0) == pytest.approx(0.5)
    assert b.take("k", 0.5) == 0.0 and b.take("k", 0.5) > 0
    b.take("x", 1.0)
    b.take("y", 1.0)
    assert "k" not in b.levels  # bounded


@pytest.fixture
def metrics_server(db_url: str) -> Iterator[Server]:
    srv = Server(db_url, env={"PGTIDE_METRICS_TOKEN": "scrape-me"}).start()
    yield srv
    srv.stop()


def _figure(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))  # fmt: skip


def test_metrics_serve_cached_database_figures_and_may_need_a_token(
    metrics_server: Server, db_url: str
) -> None:
    base = metrics_server.base
    assert httpx.get(f"{base}/metrics").status_code == 401
    bad = httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and problem_of(bad)["detail"]
    h = {"Authorization": "Bearer scrape-me"}
    # An open transaction with an xid: its age grows between database reads.
    with psycopg.connect(db_url) as holder:
        holder.execute("SELECT pg_current_xact_id()")
        with httpx.Client(base_url=base, headers=h, timeout=10) as c:
            first = c.get("/metrics")
            assert first.status_code == 200
            ages = {_figure(first.text, "pgtide_oldest_write_xact_seconds")}
            started = time.monotonic()
            while time.monotonic() - started < 0.5:  # a flood of scrapes over half a second
                ages.add(_figure(c.get("/metrics").text, "pgtide_oldest_write_xact_seconds"))
        holder.rollback()
    assert len(ages) == 1, ages  # one database read served them all
