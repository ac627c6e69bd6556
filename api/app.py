"""The Starlette application. Its lifespan is pgtide's one composition root.

Every JSON error is RFC 9457 `application/problem+json` (`type`, `title`,
`status`, `detail`), produced by the handlers registered here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.apps import App, Registry, load_apps, served_apps
from api.audit import audit_routes
from api.auth import AuthMiddleware, TokenCache, TokenWatcher, required_scope
from api.errors import HANDLERS
from api.logs import RequestLog, setup_logging
from api.metrics import Metrics, RequestMetrics, metrics_endpoint
from api.problems import http_exception, problem, unhandled
from api.ratelimit import RateLimit
from api.resources import resource_routes
from api.stream import stream_events
from api.web import web_routes
from cdc import db, retention
from cdc.catalog import Catalog
from cdc.errors import DatabaseUnavailable
from cdc.hub import Hub
from cdc.listener import Feed, Listener
from cdc.settings import Settings
from cdc.stream import CatchUpSource
from cdc.streams import Streams

log = logging.getLogger(__name__)


async def health(request: Request) -> Response:
    """`GET /health`: the process is up (says nothing about the database)."""
    return JSONResponse({"status": "ok"})


class State(TypedDict):
    """What the lifespan hands to request handlers (`request.state`)."""

    settings: Settings
    hub: Hub
    pool: AsyncConnectionPool[Any]
    token_pool: AsyncConnectionPool[Any]
    snapshot_pool: AsyncConnectionPool[Any]
    streams: Streams
    listener: Feed  # a Listener, or a gateway's BrokerFeed (PGTIDE_BROKER_URL)
    catchup: CatchUpSource | None  # a gateway replays recent catch-ups from its stream
    catalog: Catalog
    metrics: Metrics
    registry: Registry


async def ready(request: Request) -> Response:
    """`GET /ready`: 200 when the database answers and the listener follows the log."""
    state: Any = request.state
    problems = []
    if not state.listener.ready:
        problems.append("the listener is not connected")
    try:
        async with state.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
    except Exception as exc:  # any failure to reach the database means not ready
        problems.append(f"the database is unreachable ({type(exc).__name__})")
    if problems:
        return problem(503, "; ".join(problems), headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready", "seq": state.hub.last_seq})


async def _supervise(listener: Feed) -> None:
    """Run the listener for good; restart it if it ever fails.

    It reconnects on database errors by itself, so only a bug gets here; it is
    logged by name and the listener restarted after a growing pause.
    """
    pause = 1.0
    while True:
        try:
            await listener.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("listener task failed; restarting in %.0fs", pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 30.0)


def _cors(settings: Settings) -> list[Middleware]:
    """CORS for the origins in PGTIDE_CORS_ORIGINS (none by default, as docs/design.md says)."""
    origins = list(settings.cors_origins)
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-Match",
                           "If-None-Match", "Last-Event-ID", "X-Pgtide-Origin"],
            expose_headers=["ETag", "Location", "Link", "Idempotent-Replayed"],
            max_age=600,
        )
    ]  # fmt: skip


def _feed(
    url: str, hub: Hub, pool: AsyncConnectionPool[Any], settings: Settings, sequence: bool
) -> tuple[Feed, CatchUpSource | None]:
    """A plain server's Listener, or with PGTIDE_BROKER_URL a gateway's feed (docs/scale-out.md)."""
    if not settings.broker_url:
        return Listener(url, hub, settings, sequence=sequence), None
    from cdc.gateway import BrokerFeed, JetStreamCatchUp  # needs the `nats` extra

    feed = BrokerFeed(settings, hub, pool)
    return feed, JetStreamCatchUp(feed)


def app_from_env() -> Starlette:
    """The app from the environment's settings (uvicorn's factory for `--workers`)."""
    setup_logging(os.environ.get("PGTIDE_LOG_LEVEL", "info"))  # a worker process starts bare
    return create_app(Settings())


def _served_apps(url: str, settings: Settings) -> list[App]:
    """The apps the database records as installed, then those PGTIDE_APPS names."""
    try:
        return served_apps(url, settings.apps)
    except DatabaseUnavailable:
        log.warning("the database is unreachable: serving only the apps in PGTIDE_APPS")
        return load_apps(settings.apps)


def create_app(
    settings: Settings,
    *,
    database_url: str | None = None,
    run_sequencer: bool = True,
    apps: list[App] | None = None,
) -> Starlette:
    """Build the app. Its lifespan opens the pool and runs the listener (and sequencer).

    `database_url` is the resolved URL (the CLI resolves it once, starting the
    embedded server if needed); without it the lifespan resolves it from `settings`.
    `apps` are the apps whose resources are served; without them the lifespan reads
    the installed apps from the database (and adds PGTIDE_APPS).
    """

    token_cache = TokenCache()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        url = database_url
        if url is None:
            # resolve_url may start the embedded server: blocking, so off the loop.
            url = await asyncio.to_thread(db.resolve_url, settings)
        served = apps if apps is not None else await asyncio.to_thread(_served_apps, url, settings)
        hub = Hub(max_pending_bytes=settings.subscriber_max_bytes)
        # open(wait=False): the server starts even while the database is down;
        # /ready says 503 until it is back.
        # Three budgets: the shared pool (API, stream pages), token lookups and the
        # watcher (answer whatever the streams do), snapshot transactions.
        configure = db.pooled_with_timeout(settings.statement_timeout_ms)

        def budget(name: str, size: int) -> AsyncConnectionPool[Any]:
            return AsyncConnectionPool(
                url, min_size=1, max_size=size, open=False, kwargs={"autocommit": True},
                name=name, configure=configure,
            )  # fmt: skip

        pool = budget("pgtide", settings.pool_size)
        token_pool = budget("pgtide-tokens", settings.token_pool_size)
        snapshot_pool = budget("pgtide-snapshots", settings.snapshot_pool_size)
        pools = (pool, token_pool, snapshot_pool)
        for p in pools:
            await p.open(wait=False)
        streams = Streams()
        listener, catchup = _feed(url, hub, pool, settings, run_sequencer)
        task = asyncio.create_task(_supervise(listener), name="pgtide-listener")
        watcher = asyncio.create_task(
            TokenWatcher(streams, token_pool, token_cache).run(), name="pgtide-tokens"
        )
        side = [task, watcher]
        if settings.retention_keep is not None:
            side.append(asyncio.create_task(retention.run_periodically(
                url, settings.retention_keep, settings.retention_interval_s,
                settings.retention_batch), name="pgtide-retention"))  # fmt: skip
        try:
            yield {
                "settings": settings,
                "hub": hub,
                "pool": pool,
                "token_pool": token_pool,
                "snapshot_pool": snapshot_pool,
                "streams": streams,
                "listener": listener,
                "catchup": catchup,
                "catalog": Catalog(pool),
                "metrics": Metrics(hub, listener),
                "registry": Registry(served),
            }
        finally:
            # uvicorn runs this after the open responses ended (api/stream.py ends them
            # at its first signal); stopping what is left covers any other server.
            streams.stop_all()
            for sub in list(hub.subscribers):
                hub.unsubscribe(sub)
            for t in side:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            for p in pools:
                await p.close()

    handlers: dict[Any, Any] = {HTTPException: http_exception, **HANDLERS, Exception: unhandled}
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/events", stream_events, methods=["GET"]),
        # Before the generic /api/{resource}/... routes, so /history is matched here.
        *audit_routes(),
        *resource_routes(),
        *web_routes(),
    ]
    templates = {r.endpoint: r.path for r in routes}
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers=handlers,
        middleware=[
            # Outermost: a browser's preflight is answered before auth asks for a token.
            *_cors(settings),
            Middleware(RequestLog, routes=templates),
            Middleware(RequestMetrics, routes=templates),
            Middleware(AuthMiddleware, enabled=not settings.insecure_no_auth, cache=token_cache),
            # Behind auth: requests are counted per token (auth off: per client address).
            Middleware(
                RateLimit,
                rate=settings.rate_limit_per_s,
                burst=settings.rate_limit_burst,
                applies=lambda method, path: required_scope(method, path) is not None,
            ),
        ],
    )
