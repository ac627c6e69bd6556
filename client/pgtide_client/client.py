"""Client and AsyncClient: writes, reads, push, subscriptions and await_txid on one server.

    with Client("http://127.0.0.1:8000", token) as pg:
        pg.follow(tables="orders", replica=replica)   # a subscription in a thread
        w = pg.patch("orders", order_id, {"status": "paid"}, if_match=3)
        pg.await_txid(w.txid, timeout=5)   # it came back on that subscription

Every subscription opened through a client notes the txids it sees, so
`await_txid` returns once one's own write came back on the stream (write
responses, and `applied` push results, carry the write's `txid`). A write that
changed nothing, or one to a table no subscription follows, never comes back:
give a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx

from pgtide_client import http
from pgtide_client.errors import Unavailable
from pgtide_client.events import Event, Synced
from pgtide_client.http import Call, Fetched, Key, Row, Written
from pgtide_client.subscribe import asubscribe, subscribe
from pgtide_client.txids import TxidWatch


class Following:
    """A subscription run in a daemon thread (`Client.follow`): for its replica and await_txid.

    `synced` is set at the first `synced`; `error` holds what ended it (a final
    refusal), if anything did; `stop()` ends it after the next event.
    """

    def __init__(self, events: Iterator[Event]) -> None:
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self._events = events
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pgtide-follow", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self._events:
                if isinstance(event, Synced):
                    self.synced.set()
                if self._stop.is_set():
                    break
        except Exception as exc:
            self.error = exc
            self.synced.set()  # nobody waits for ever on a subscription that was refused

    def stop(self) -> None:
        self._stop.set()


def _txid(txid: str | None) -> str:
    if not txid:
        raise ValueError("this write carries no txid (nothing was written?)")
    return txid


class _Base:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        origin: str | None,
        actor: str | None,
        attempts: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.attempts = attempts
        self.txids = TxidWatch()
        self.headers: dict[str, str] = {}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        if origin:
            self.headers["X-Pgtide-Origin"] = origin
        if actor:  # honoured only by a server without auth (`serve --insecure-no-auth`)
            self.headers["X-Pgtide-Actor"] = actor

    @staticmethod
    def _push_call(
        mutations: Sequence[Mapping[str, Any]], client_id: str | None, policy: str
    ) -> Call:
        body: dict[str, Any] = {"policy": policy, "mutations": list(mutations)}
        if client_id is not None:
            body["client_id"] = client_id
        headers = {"Content-Type": "application/json"}
        return Call("POST", "/api/sync/push", http.dumps(body), headers)


class Client(_Base):
    """A pgtide server, for threads (httpx.Client underneath)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        origin: str | None = None,
        actor: str | None = None,
        timeout: float = 30.0,
        attempts: int = http.ATTEMPTS,
    ) -> None:
        super().__init__(base_url, token, origin=origin, actor=actor, attempts=attempts)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, call: Call) -> httpx.Response:
        """Send a call, retrying what may be retried (the same bytes, the same key)."""
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: Exception | None = None
            try:
                response = self.http.request(
                    call.method, call.path, content=call.body, headers=call.headers,
                    params=call.params,
                )  # fmt: skip
            except httpx.TransportError as exc:
                error = exc
            delay = http.should_retry(response, attempt, self.attempts)
            if delay is None:
                if response is not None:
                    return response
                raise Unavailable(f"{call.method} {call.path}: {error}") from error
            attempt += 1
            time.sleep(delay)

    def subscribe(self, **options: Any) -> Iterator[Event]:
        """`pgtide_client.subscribe` on this server, noting txids for `await_txid`."""
        return subscribe(self.base_url, self.token, txids=self.txids, **options)

    def follow(self, **options: Any) -> Following:
        """Run `subscribe(**options)` in a daemon thread (keeping its replica up to date)."""
        return Following(self.subscribe(**options))

    def await_txid(self, txid: str | None, timeout: float | None = None) -> None:
        """Block until a change of `txid` arrived on a subscription of this client."""
        self.txids.wait(_txid(txid), timeout)

    def get(self, resource: str, key: Key) -> Fetched:
        return http.fetched(self.send(Call("GET", http.path_of(resource, key))))

    def rows(self, resource: str, params: Mapping[str, str] | None = None) -> Iterator[Row]:
        """Every row that matches `params` (filters, `order`, `limit`), page after page."""
        call: Call | None = Call("GET", http.path_of(resource), params=dict(params or {}))
        while call is not None:
            body = http.outcome(self.send(call))
            yield from body["data"]
            call = Call("GET", body["next"]) if body.get("next") else None

    def create(self, resource: str, data: Any, *, idempotency_key: str | None = None) -> Written:
        """POST a row (or a list of rows, in one transaction)."""
        call = http.write("POST", http.path_of(resource), data, if_match=None,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(self.send(call))

    def replace(
        self, resource: str, key: Key, data: Row, *,
        if_match: int | str | None = None, idempotency_key: str | None = None,
    ) -> Written:  # fmt: skip
        """PUT: every writable field (those left out take the column's default)."""
        call = http.write("PUT", http.path_of(resource, key), data, if_match=if_match,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(self.send(call))

    def patch(
        self, resource: str, key: Key, data: Row, *,
        if_match: int | str | None = None, idempotency_key: str | None = None,
    ) -> Written:  # fmt: skip
        """PATCH: the fields given."""
        call = http.write("PATCH", http.path_of(resource, key), data, if_match=if_match,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(self.send(call))

    def delete(
        self, resource: str, key: Key, *,
        if_match: int | str | None = None, idempotency_key: str | None = None,
    ) -> Written:  # fmt: skip
        """DELETE: answers with the deleted row and the txid."""
        call = http.write("DELETE", http.path_of(resource, key), None, if_match=if_match,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(self.send(call))

    def push(
        self, mutations: Sequence[Mapping[str, Any]], *,
        client_id: str | None = None, policy: str = "version",
    ) -> list[dict[str, Any]]:  # fmt: skip
        """POST /api/sync/push: one result per mutation (resending is safe: `duplicate`)."""
        body = http.outcome(self.send(self._push_call(mutations, client_id, policy)))
        return list(body["results"])


class AsyncClient(_Base):
    """A pgtide server, for asyncio (httpx.AsyncClient underneath)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        origin: str | None = None,
        actor: str | None = None,
        timeout: float = 30.0,
        attempts: int = http.ATTEMPTS,
    ) -> None:
        super().__init__(base_url, token, origin=origin, actor=actor, attempts=attempts)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, call: Call) -> httpx.Response:
        """Send a call, retrying what may be retried (the same bytes, the same key)."""
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: Exception | None = None
            try:
                response = await self.http.request(
                    call.method, call.path, content=call.body, headers=call.headers,
                    params=call.params,
                )  # fmt: skip
            except httpx.TransportError as exc:
                error = exc
            delay = http.should_retry(response, attempt, self.attempts)
            if delay is None:
                if response is not None:
                    return response
                raise Unavailable(f"{call.method} {call.path}: {error}") from error
            attempt += 1
            await asyncio.sleep(delay)

    def subscribe(self, **options: Any) -> AsyncIterator[Event]:
        """`pgtide_client.asubscribe` on this server, noting txids for `await_txid`."""
        return asubscribe(self.base_url, self.token, txids=self.txids, **options)

    async def await_txid(self, txid: str | None, timeout: float | None = None) -> None:
        """Wait until a change of `txid` arrived on a subscription of this client."""
        await self.txids.await_(_txid(txid), timeout)

    async def get(self, resource: str, key: Key) -> Fetched:
        return http.fetched(await self.send(Call("GET", http.path_of(resource, key))))

    async def rows(
        self, resource: str, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[Row]:
        """Every row that matches `params` (filters, `order`, `limit`), page after page."""
        call: Call | None = Call("GET", http.path_of(resource), params=dict(params or {}))
        while call is not None:
            body = http.outcome(await self.send(call))
            for row in body["data"]:
                yield row
            call = Call("GET", body["next"]) if body.get("next") else None

    async def create(
        self, resource: str, data: Any, *, idempotency_key: str | None = None
    ) -> Written:
        """POST a row (or a list of rows, in one transaction)."""
        call = http.write("POST", http.path_of(resource), data, if_match=None,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(await self.send(call))

    async def replace(
        self, resource: str, key: Key, data: Row, *,
        if_match: int | str | None = None, idempotency_key: str | None = None,
    ) -> Written:  # fmt: skip
        """PUT: every writable field (those left out take the column's default)."""
        call = http.write("PUT", http.path_of(resource, key), data, if_match=if_match,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(await self.send(call))

    async def patch(
        self, resource: str, key: Key, data: Row, *,
        if_match: int | str | None = None, idempotency_key: str | None = None,
    ) -> Written:  # fmt: skip
        """PATCH: the fields given."""
        call = http.write("PATCH", http.path_of(resource, key), data, if_match=if_match,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(await self.send(call))

    async def delete(
        self, resource: str, key: Key, *,
        if_match: int | str | None = None, idempotency_key: str | None = None,
    ) -> Written:  # fmt: skip
        """DELETE: answers with the deleted row and the txid."""
        call = http.write("DELETE", http.path_of(resource, key), None, if_match=if_match,
                          idempotency_key=idempotency_key)  # fmt: skip
        return http.written(await self.send(call))

    async def push(
        self, mutations: Sequence[Mapping[str, Any]], *,
        client_id: str | None = None, policy: str = "version",
    ) -> list[dict[str, Any]]:  # fmt: skip
        """POST /api/sync/push: one result per mutation (resending is safe: `duplicate`)."""
        body = http.outcome(await self.send(self._push_call(mutations, client_id, policy)))
        return list(body["results"])
