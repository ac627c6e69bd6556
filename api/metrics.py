"""`GET /metrics` in Prometheus text format, and the HTTP request metrics middleware.

Engine figures are read from the hub, listener and sequencer at scrape time
(a collector, no per-event cost); database figures come from one query at most
every `DB_CACHE_S` seconds, however many scrapes arrive (one runs at a time, the
others take its figures), so a flood of `GET /metrics` costs the database
nothing. With `PGTIDE_METRICS_TOKEN` set, a scrape needs that bearer token.
Each server process has its own registry: no module globals.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.logs import route_name
from api.problems import problem
from cdc.hub import LAG_BUCKETS, Hub
from cdc.listener import Feed
from cdc.queries import queries

DB_CACHE_S = 5.0  # how long the database figures of one scrape serve the next ones


class EngineCollector(Collector):
    """Reads the engine's counters when Prometheus scrapes."""

    def __init__(self, hub: Hub, listener: Feed) -> None:
        self.hub = hub
        self.listener = listener
        self.db: dict[str, float] = {}  # filled by the /metrics handler before each scrape

    def collect(self) -> Iterator[Metric]:
        hub, lst, seq = self.hub, self.listener, self.listener.sequencer
        yield CounterMetricFamily(
            "pgtide_events_published", "Changes published to this process's hub", hub.published
        )
        yield CounterMetricFamily(
            "pgtide_events_delivered", "Events queued to subscribers", hub.delivered
        )
        yield GaugeMetricFamily(
            "pgtide_subscribers", "Open stream subscribers", len(hub.subscribers)
        )
        yield CounterMetricFamily(
            "pgtide_subscriber_drops", "Subscribers closed for falling behind", hub.dropped
        )
        yield GaugeMetricFamily("pgtide_feed_seq", "Last seq published here", hub.last_seq or 0)
        yield GaugeMetricFamily("pgtide_listener_up", "Listener connected (1) or not", lst.ready)
        yield CounterMetricFamily(
            "pgtide_listener_reconnects", "Listener reconnections", lst.reconnects
        )
        buckets = []
        acc = 0
        for bound, count in zip([*LAG_BUCKETS, float("inf")], hub.lag.counts, strict=True):
            acc += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", acc))
        yield HistogramMetricFamily(
            "pgtide_publish_lag_seconds",
            "From a change's clock time in its transaction to publication in this process",
            buckets=buckets,
            sum_value=hub.lag.total,
        )
        if seq is not None:
            st = seq.stats
            yield GaugeMetricFamily(
                "pgtide_sequencer_leader", "This process sequences", seq.is_leader
            )
            mode = GaugeMetricFamily("pgtide_sequencer_mode", "Doorbell state", labels=["mode"])
            mode.add_metric([seq.mode.value], 1)
            yield mode
            yield CounterMetricFamily("pgtide_sequencer_passes", "Discovery passes", st.passes)
            yield CounterMetricFamily("pgtide_sequencer_batches", "Batches committed", st.batches)
            yield CounterMetricFamily("pgtide_sequenced", "Changes sequenced here", st.sequenced)
            yield CounterMetricFamily(
                "pgtide_doorbell_rings", "Wake-ups by the doorbell NOTIFY", st.rings
            )
            yield CounterMetricFamily(
                "pgtide_doorbell_safety_polls", "Wake-ups by the safety poll", st.safety_polls
            )
            yield GaugeMetricFamily(
                "pgtide_sequencer_open_xids",
                "Transactions the sequencer waits on",
                len(seq.open_xids),
            )
        for name, (doc, value) in _db_metrics(self.db).items():
            yield GaugeMetricFamily(name, doc, value)


def _db_metrics(db: dict[str, float]) -> dict[str, tuple[str, float]]:
    docs = {
        "pgtide_unsequenced_changes": "Committed changes not yet sequenced",
        "pgtide_oldest_write_xact_seconds": "Age of the oldest open transaction with an xid",
        "pgtide_notification_queue_usage": "pg_notification_queue_usage()",
        "pgtide_sync_log_bytes": "Size of pgtide.sync_log with its indexes",
        "pgtide_database_up": "The database answered the scrape's query",
    }
    return {k: (docs[k], db[k]) for k in docs if k in db}


class Metrics:
    """A process's registry: the engine collector plus HTTP request metrics."""

    def __init__(self, hub: Hub, listener: Feed) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.engine = EngineCollector(hub, listener)
        self.registry.register(self.engine)
        self.requests = Counter(
            "pgtide_http_requests", "HTTP requests", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "pgtide_http_request_seconds", "Time to the response's first byte",
            ["route", "method"], registry=self.registry,
        )  # fmt: skip

        self.db_read_at: float | None = None  # monotonic time of the last database read
        self.db_lock = asyncio.Lock()

    async def refresh_db(self, pool: Any) -> None:
        """Read the database figures, unless read less than DB_CACHE_S ago (or meanwhile)."""
        async with self.db_lock:  # concurrent scrapes wait for one read, then share it
            read_at = self.db_read_at
            if read_at is not None and time.monotonic() - read_at < DB_CACHE_S:
                return
            await self._read_db(pool)
            self.db_read_at = time.monotonic()

    async def _read_db(self, pool: Any) -> None:
        """Read the database figures (a failure says the database is down)."""
        try:
            async with pool.connection(timeout=2) as conn:
                row = await (await conn.execute(queries["metrics"])).fetchone()
            self.engine.db = {
                "pgtide_unsequenced_changes": float(row[0]),
                "pgtide_oldest_write_xact_seconds": float(row[1] or 0),
                "pgtide_notification_queue_usage": float(row[2]),
                "pgtide_sync_log_bytes": float(row[3]),
                "pgtide_database_up": 1.0,
            }
        except Exception:  # any failure to reach the database is "down", not a 500
            self.engine.db = {"pgtide_database_up": 0.0}


async def metrics_endpoint(request: Request) -> Response:
    """`GET /metrics`: Prometheus text (with PGTIDE_METRICS_TOKEN set, for its bearer only)."""
    state: Any = request.state
    expected = state.settings.metrics_token
    if expected:
        kind, _, given = request.headers.get("authorization", "").partition(" ")
        if kind.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            return problem(
                401,
                "GET /metrics needs the bearer token PGTIDE_METRICS_TOKEN names",
                headers={"WWW-Authenticate": 'Bearer realm="pgtide-metrics"'},
            )
    await state.metrics.refresh_db(state.pool)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """Pure ASGI middleware: counts requests by route template, method and status.

    Latency is the time to the response's start (for an SSE stream, to its
    headers), so endless streams do not skew it.
    """

    def __init__(self, app: ASGIApp, routes: dict[Any, str]) -> None:
        self.app = app
        self.routes = routes  # endpoint -> path template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        responded = False

        def count(status: int) -> None:
            metrics = _metrics_of(scope)
            if metrics is not None:
                route, method = self._route(scope), scope["method"]
                metrics.requests.labels(route, method, str(status)).inc()
                metrics.latency.labels(route, method).observe(time.perf_counter() - started)

        async def send_wrapper(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                # Counted when the response starts: a stream may never end.
                responded = True
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not responded:
                count(500)

    def _route(self, scope: Scope) -> str:
        return route_name(scope, self.routes.get(scope.get("endpoint"), "unmatched"))


def _metrics_of(scope: Scope) -> Metrics | None:
    state = scope.get("state") or {}
    m = state.get("metrics") if isinstance(state, dict) else None
    return m if isinstance(m, Metrics) else None
