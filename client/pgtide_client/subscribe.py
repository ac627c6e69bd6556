"""subscribe / asubscribe: follow `GET /events` for ever, resuming by cursor.

Each connection reads with a read timeout of `heartbeat_timeout` (the server
sends a comment at least every 15 s, so a silent connection is a dead one);
a connection that ends for any reason (cut, server restart, closed as too
slow, `error`) is retried after the session's backoff and resumes from the
cursor; final refusals (400, 401, 403, 404) raise HTTPError. The rules are in
session.py; these two drivers only do the I/O, one with httpx's async client,
one with its sync client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import httpx
from httpx_sse import SSEError, aconnect_sse, connect_sse

from pgtide_client.events import Change, Event, Reset
from pgtide_client.replica import Replica
from pgtide_client.session import HEARTBEAT_TIMEOUT_S, MAX_BACKOFF_S, Session, retry_after
from pgtide_client.txids import TxidWatch

# What ends a connection without ending the subscription.
LOST = (httpx.TransportError, SSEError)


@dataclass
class Options:
    """Everything a subscription was asked for besides its selection."""

    url: str
    token: str | None
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S
    replica: Replica | None = None
    txids: TxidWatch | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/events"

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(10.0, read=self.heartbeat_timeout)

    def request_headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {**self.headers, **auth, **extra}

    def note(self, event: Event) -> None:
        """Keep the replica and the txid watch up to date before the caller sees the event."""
        if self.replica is not None:
            self.replica.apply(event)
        if self.txids is not None and isinstance(event, Change) and event.txid:
            self.txids.note(event.txid)


def _setup(
    url: str,
    token: str | None,
    *,
    tables: Sequence[str] | str | None,
    ops: Sequence[str] | str | None,
    topics: Sequence[str] | str | None,
    filters: Mapping[str, str] | None,
    since: str | int | None,
    snapshot: bool,
    replica: Replica | None,
    heartbeat_timeout: float,
    max_backoff: float,
    txids: TxidWatch | None,
) -> tuple[Session, Options]:
    session = Session(
        tables=_names(tables), ops=_names(ops), topics=_names(topics),
        filters=dict(filters or {}), since=None if since is None else str(since),
        snapshot=snapshot, max_backoff=max_backoff,
    )  # fmt: skip
    if replica is not None:
        replica.bind(session.signature())  # a replica of another selection starts over
        session.resume_from(replica.cursor)
    return session, Options(url, token, heartbeat_timeout, replica, txids)


def _names(value: Sequence[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    return [v for v in value.split(",") if v] if isinstance(value, str) else list(value)


async def asubscribe(
    url: str,
    token: str | None = None,
    *,
    tables: Sequence[str] | str | None = None,
    ops: Sequence[str] | str | None = None,
    topics: Sequence[str] | str | None = None,
    filters: Mapping[str, str] | None = None,
    since: str | int | None = None,
    snapshot: bool = False,
    replica: Replica | None = None,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    max_backoff: float = MAX_BACKOFF_S,
    txids: TxidWatch | None = None,
    client: httpx.AsyncClient | None = None,
) -> AsyncIterator[Event]:
    """Changes and control events of `GET /events` at `url`, for ever (async).

    `tables`, `ops`, `topics` (lists or comma-separated), `filters` (`{col:
    "op.value"}`), `since` (`now`, `earliest` or a cursor) and `snapshot` are
    those of the stream. A `replica` is kept up to date before each event is
    yielded, and its cursor (if it has one) is where the subscription starts.
    Close the iterator (`aclose()`, or `contextlib.aclosing`) to disconnect.
    """
    session, opts = _setup(
        url, token, tables=tables, ops=ops, topics=topics, filters=filters, since=since,
        snapshot=snapshot, replica=replica, heartbeat_timeout=heartbeat_timeout,
        max_backoff=max_backoff, txids=txids,
    )  # fmt: skip
    http = client or httpx.AsyncClient()
    try:
        while True:
            req = session.request()
            wait_at_least: float | None = None
            reason, was_reset = "the server ended the stream", False
            try:
                async with aconnect_sse(
                    http, "GET", opts.endpoint, params=req.params,
                    headers=opts.request_headers(req.headers), timeout=opts.timeout(),
                ) as source:  # fmt: skip
                    response = source.response
                    if response.status_code != 200:
                        session.refused(response.status_code, await response.aread())
                        reason = f"the server answered {response.status_code}"
                        wait_at_least = retry_after(response.headers)
                    else:
                        for event in session.opened():
                            opts.note(event)
                            yield event
                        async for sse in source.aiter_sse():
                            got = session.receive(sse)
                            if got is None:
                                continue
                            opts.note(got)
                            yield got
                            if isinstance(got, Reset):
                                was_reset = True
                                break
            except LOST as exc:
                reason = _why(exc)
            if was_reset:
                continue  # start over at once: a new snapshot, or from now
            pause = session.failed(reason, wait_at_least)
            yield pause
            await asyncio.sleep(pause.delay)
    finally:
        if client is None:
            await http.aclose()


def subscribe(
    url: str,
    token: str | None = None,
    *,
    tables: Sequence[str] | str | None = None,
    ops: Sequence[str] | str | None = None,
    topics: Sequence[str] | str | None = None,
    filters: Mapping[str, str] | None = None,
    since: str | int | None = None,
    snapshot: bool = False,
    replica: Replica | None = None,
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT_S,
    max_backoff: float = MAX_BACKOFF_S,
    txids: TxidWatch | None = None,
    client: httpx.Client | None = None,
) -> Iterator[Event]:
    """The same as `asubscribe`, for threads: close the iterator (`close()`) to disconnect."""
    session, opts = _setup(
        url, token, tables=tables, ops=ops, topics=topics, filters=filters, since=since,
        snapshot=snapshot, replica=replica, heartbeat_timeout=heartbeat_timeout,
        max_backoff=max_backoff, txids=txids,
    )  # fmt: skip
    http = client or httpx.Client()
    try:
        while True:
            req = session.request()
            wait_at_least: float | None = None
            reason, was_reset = "the server ended the stream", False
            try:
                with connect_sse(
                    http, "GET", opts.endpoint, params=req.params,
                    headers=opts.request_headers(req.headers), timeout=opts.timeout(),
                ) as source:  # fmt: skip
                    response = source.response
                    if response.status_code != 200:
                        session.refused(response.status_code, response.read())
                        reason = f"the server answered {response.status_code}"
                        wait_at_least = retry_after(response.headers)
                    else:
                        for event in session.opened():
                            opts.note(event)
                            yield event
                        for sse in source.iter_sse():
                            got = session.receive(sse)
                            if got is None:
                                continue
                            opts.note(got)
                            yield got
                            if isinstance(got, Reset):
                                was_reset = True
                                break
            except LOST as exc:
                reason = _why(exc)
            if was_reset:
                continue  # start over at once: a new snapshot, or from now
            pause = session.failed(reason, wait_at_least)
            yield pause
            time.sleep(pause.delay)
    finally:
        if client is None:
            http.close()


def _why(exc: Exception) -> str:
    if isinstance(exc, httpx.ReadTimeout):
        return "no heartbeat: the connection is dead"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
