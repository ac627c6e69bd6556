"""Authentication and authorisation, enforced in one place: `AuthMiddleware`.

Each request's required scope comes from its method and path (`required_scope`);
the token comes from `Authorization: Bearer …`, or `?access_token=` on
`GET /events` only (EventSource cannot send headers). 401 for a missing,
unknown, expired or revoked token; 403 for a missing scope. The resolved
`Principal` is put in the request state for the routes, which apply its branch
pin to what they read and write.

Token lookups are cached for `CACHE_S` seconds, so a revocation reaches new
requests within seconds; `TokenWatcher` closes the open streams of revoked or
expired tokens on the same clock. Made-up tokens are cheap to refuse: one that is
not of the form `create` makes (cdc/tokens.py) is refused without a lookup; an
unknown one is remembered as unknown for `CACHE_S`, apart from the valid ones (a
flood of unknown tokens evicts no valid one, and each cache is bounded, least
recently used first); and each client address may make only `UNKNOWN_PER_S`
lookups that find nothing per second (bursts of `UNKNOWN_BURST`), then 429.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem
from api.ratelimit import Buckets, client_address, retry_after
from cdc import tokens
from cdc.streams import Streams

log = logging.getLogger(__name__)

CACHE_S = 2.0
CACHE_MAX = 10_000  # entries per cache (valid tokens; unknown ones)
UNKNOWN_PER_S = 5.0  # lookups that find no token, per client address and second
UNKNOWN_BURST = 50
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/", "/branch"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name, scopes and branch pin."""

    token_id: int | None
    name: str
    scopes: frozenset[str]
    branch_id: str | None = None

    def can(self, scope: str) -> bool:
        """Whether this principal holds `scope` (admin holds every scope)."""
        return "admin" in self.scopes or scope in self.scopes


# With auth disabled (`serve --insecure-no-auth`), every request acts as this.
NO_AUTH = Principal(None, "insecure-no-auth", frozenset(tokens.SCOPES))


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; None for public paths (and unknown ones, which 404)."""
    if path in PUBLIC_PATHS or path.startswith("/static/"):
        return None
    if path == "/events":
        return "read"
    if path == "/api/sync-log" or (path.startswith("/api/") and path.endswith("/history")):
        return "audit"
    if path.startswith("/api/"):
        return "read" if method in READ_METHODS else "write"
    return None


class TokenCache:
    """Recently resolved tokens (for `CACHE_S`), shared with the watcher that evicts them.

    Valid and unknown tokens are kept apart, each bounded to `max_entries` with the
    least recently used evicted first: unknown tokens, however many, never push out a
    valid one.
    """

    def __init__(self, max_entries: int = CACHE_MAX) -> None:
        self.max_entries = max_entries
        self.valid: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self.unknown: OrderedDict[bytes, float] = OrderedDict()

    def get(self, key: bytes, now: float) -> tuple[bool, Principal | None]:
        """(hit, principal) for a token's hash."""
        hit = self.valid.get(key)
        if hit is not None and hit[1] > now:
            self.valid.move_to_end(key)
            return True, hit[0]
        until = self.unknown.get(key)
        if until is not None and until > now:
            return True, None
        return False, None

    def put(self, key: bytes, principal: Principal | None, now: float) -> None:
        """Remember a lookup for CACHE_S."""
        if principal is None:
            self.valid.pop(key, None)
            self.unknown[key] = now + CACHE_S
            self.unknown.move_to_end(key)
            _bound(self.unknown, self.max_entries)
        else:
            self.unknown.pop(key, None)
            self.valid[key] = (principal, now + CACHE_S)
            self.valid.move_to_end(key)
            _bound(self.valid, self.max_entries)

    def evict(self, token_ids: set[int]) -> None:
        """Forget these tokens at once (they were revoked or expired)."""
        for key, (p, _) in list(self.valid.items()):
            if p.token_id in token_ids:
                del self.valid[key]


def _bound(entries: OrderedDict[bytes, Any], size: int) -> None:
    while len(entries) > size:
        entries.popitem(last=False)  # the least recently used


class AuthMiddleware:
    """Pure ASGI middleware: resolves the principal or answers 401/403 itself."""

    def __init__(self, app: ASGIApp, enabled: bool, cache: TokenCache) -> None:
        self.app = app
        self.enabled = enabled
        self.cache = cache
        self.unknown = Buckets(UNKNOWN_PER_S, UNKNOWN_BURST)  # per client address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.enabled:
            state["principal"] = NO_AUTH
            await self.app(scope, receive, send)
            return
        need = required_scope(scope["method"], scope["path"])
        if need is None:
            await self.app(scope, receive, send)
            return
        token = _presented_token(scope)
        if token is None:
            await _deny(scope, receive, send, 401, "a bearer token is required")
            return
        if not tokens.well_formed(token):  # refused without a lookup
            await _deny(scope, receive, send, 401, "unknown, expired or revoked token")
            return
        try:
            principal = await self._resolve(state, token, client_address(scope))
        except _TooManyUnknown as exc:
            await problem(429, "too many unknown tokens from this address; retry later",
                          headers={"Retry-After": retry_after(exc.wait)})(
                scope, receive, send)  # fmt: skip
            return
        if principal is None:
            await _deny(scope, receive, send, 401, "unknown, expired or revoked token")
            return
        if not principal.can(need):
            await _deny(scope, receive, send, 403, f"this token lacks the {need!r} scope")
            return
        state["principal"] = principal
        await self.app(scope, receive, send)

    async def _resolve(self, state: dict[str, Any], token: str, address: str) -> Principal | None:
        now = time.monotonic()
        pepper = state["settings"].token_pepper
        key = tokens.hash_token(token, pepper)  # the cache never holds tokens themselves
        hit, principal = self.cache.get(key, now)
        if hit:
            return principal
        wait = self.unknown.wait(address, now)
        if wait > 0:  # this address made up too many tokens lately: no lookup for it
            raise _TooManyUnknown(wait)
        # Their own small pool: lookups answer whatever the streams and the API hold.
        async with state["token_pool"].connection() as conn:
            rec = await tokens.lookup(conn, token, pepper)
        principal = (
            Principal(rec.id, rec.name, frozenset(rec.scopes), rec.branch_id) if rec else None
        )
        if principal is None:
            self.unknown.spend(address, now)
        self.cache.put(key, principal, now)
        return principal


class _TooManyUnknown(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


def _presented_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            kind, _, cred = value.decode("latin-1").partition(" ")
            return cred.strip() if kind.lower() == "bearer" and cred.strip() else None
    if scope["path"] == "/events" and scope.get("query_string"):
        qs: bytes = scope["query_string"]
        values = parse_qs(qs.decode("latin-1")).get("access_token")
        if values:
            return str(values[0])
    return None


async def _deny(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    headers = {"WWW-Authenticate": 'Bearer realm="pgtide"'} if status == 401 else None
    await problem(status, detail, headers=headers)(scope, receive, send)


class TokenWatcher:
    """Ends the open streams of tokens that have been revoked or have expired.

    It counts streams from admission (cdc/streams.py), so a snapshot or a catch-up
    ends too, and reads tokens through the token pool, apart from the streams'.
    """

    def __init__(
        self, streams: Streams, pool: Any, cache: TokenCache, interval_s: float = CACHE_S
    ) -> None:
        self.streams = streams
        self.pool = pool
        self.cache = cache
        self.interval_s = interval_s

    async def run(self) -> None:
        """Check every `interval_s` until cancelled; a database error only delays it."""
        while True:
            await asyncio.sleep(self.interval_s)
            owners = self.streams.owners()
            if not owners:
                continue
            try:
                async with self.pool.connection(timeout=5) as conn:
                    gone = await tokens.inactive(conn, sorted(owners))
            except Exception as exc:  # the database being away must not stop the watcher
                log.warning("token watcher: %s", type(exc).__name__)
                continue
            self.cache.evict(gone)
            if self.streams.stop(gone):
                log.info("closed the streams of revoked or expired token ids %s", sorted(gone))
