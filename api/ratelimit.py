"""Request-rate limits: token buckets in memory, one per token (or client address).

`RateLimit` is pure ASGI middleware behind `AuthMiddleware`: each request that needs
a scope takes one token from the bucket of its principal's token (with auth off, of
its client address); an empty bucket answers 429 problem+json with `Retry-After`.
Buckets hold `burst` tokens and refill at `rate` per second. They live in each server
process (no database round trip, no shared state), so with `--workers N` a token may
make N times the rate in all. The buckets are bounded: past `MAX_KEYS` the least
recently used is forgotten (it comes back full, which only favours the caller).

`Buckets` is also the budget for lookups of unknown tokens per address (api/auth.py).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem

MAX_KEYS = 10_000


class Buckets:
    """Token buckets by key: `burst` tokens each, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.levels: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def _level(self, key: Hashable, now: float) -> float:
        level, at = self.levels.get(key, (self.burst, now))
        return min(self.burst, level + (now - at) * self.rate)

    def wait(self, key: Hashable, now: float, cost: float = 1.0) -> float:
        """Seconds until `key` could spend `cost` (0: it can now); spends nothing."""
        missing = cost - self._level(key, now)
        return 0.0 if missing <= 0 else missing / self.rate if self.rate > 0 else math.inf

    def take(self, key: Hashable, now: float, cost: float = 1.0) -> float:
        """Spend `cost` from `key`'s bucket and return 0, or the seconds to wait (spent nothing)."""
        level = self._level(key, now)
        if level < cost:
            return self.wait(key, now, cost)
        self.spend(key, now, cost)
        return 0.0

    def spend(self, key: Hashable, now: float, cost: float = 1.0) -> None:
        """Spend `cost` whatever the level (it may go below zero: the caller already paid)."""
        self.levels[key] = (self._level(key, now) - cost, now)
        self.levels.move_to_end(key)
        while len(self.levels) > self.max_keys:
            self.levels.popitem(last=False)


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


class RateLimit:
    """Pure ASGI middleware: at most `rate` requests per second per token (or address)."""

    def __init__(
        self, app: ASGIApp, rate: float, burst: int, applies: Callable[[str, str], bool]
    ) -> None:
        self.app = app
        self.buckets = Buckets(rate, burst) if rate > 0 else None
        self.applies = applies  # (method, path): public routes are not limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.buckets is None
            or scope["type"] != "http"
            or not self.applies(scope["method"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        token_id = getattr(principal, "token_id", None)
        key = ("token", token_id) if token_id is not None else ("address", client_address(scope))
        wait = self.buckets.take(key, time.monotonic())
        if wait > 0:
            who = "this token" if token_id is not None else "this client address"
            detail = (
                f"{who} sends more than {self.buckets.rate:g} requests per second "
                f"(bursts of {self.buckets.burst:g}; PGTIDE_RATE_LIMIT_PER_S); retry later"
            )
            await problem(429, detail, headers={"Retry-After": retry_after(wait)})(
                scope, receive, send
            )  # fmt: skip
            return
        await self.app(scope, receive, send)


def client_address(scope: Scope) -> str:
    """The client's address as the server sees it (uvicorn applies trusted proxy headers)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
