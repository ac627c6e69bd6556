"""One settings object, read from the environment (`DATABASE_URL`, `PGTIDE_*`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cdc.timespec import parse_duration


def _duration(value: Any) -> Any:
    """`30d`-style durations for timedelta settings (empty: unset)."""
    if isinstance(value, str):
        return parse_duration(value) if value.strip() else None
    return value


def _names(value: Any) -> Any:
    """Comma-separated names (`a, b`) as a tuple, blanks dropped: parsed once, here."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


Names = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_names)]


class Settings(BaseSettings):
    """pgtide's settings. Every field is listed in docs/operations.md."""

    model_config = SettingsConfigDict(env_prefix="PGTIDE_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "PGTIDE_DATABASE_URL"),
        description="libpq URL of the database; unset starts the embedded PostgreSQL.",
    )
    data_dir: Path = Field(
        default=Path(".pgtide"),
        description="Where the embedded PostgreSQL keeps its data (when DATABASE_URL is unset).",
    )
    # Apps to install and serve besides those the database records (docs/design.md, Apps).
    apps: Names = ()
    host: str = "127.0.0.1"
    port: int = 8000
    pool_size: int = Field(default=10, description="Database connections per server process.")
    # Every statement on the server's pools (API, streams, tokens; not the listener,
    # the sequencer or migrations) is cancelled after this many milliseconds (0: never).
    statement_timeout_ms: int = Field(default=5000, ge=0)
    # Connections for token lookups and the token watcher, apart from the shared pool.
    token_pool_size: int = Field(default=2, ge=1)
    # Connections for snapshot reads (REPEATABLE READ), apart from the shared pool.
    snapshot_pool_size: int = Field(default=2, ge=1)
    # Longest a snapshot's transaction may live; a snapshot not read by then ends the
    # stream with an `error` event `snapshot_timeout` (docs/stream.md).
    snapshot_max_s: float = Field(default=60.0, gt=0)
    # Sequencer tuning (cdc/sequencer.py): while commits come faster than
    # `poll_above_per_s`, a busy sequencer polls every `poll_min_ms`, doubling on empty
    # passes up to the mean gap between commits (at most `poll_max_ms`); slower than
    # that it sleeps on the doorbell, which writers ring at once.
    poll_min_ms: float = 1.0
    poll_max_ms: float = 16.0
    poll_above_per_s: float = Field(default=250.0, gt=0)
    # Slow safety poll while asleep: a lost notification delays, never loses.
    safety_poll_s: float = 1.0
    # Rows sequenced per batch when a backlog has built up.
    batch_rows: int = 5000
    # First delay before the listener or sequencer reconnects to a lost database
    # (then doubling, with jitter, up to 30 s).
    reconnect_base_s: float = 1.0
    # Bytes a subscriber may have queued before it is closed with a `retry:` hint.
    subscriber_max_bytes: int = 4 * 1024 * 1024
    # Auth. Tokens are stored as BLAKE2b(token, key=pepper); see cdc/tokens.py.
    token_pepper: str | None = None
    # A file holding an admin token for containers (docs/operations.md, Docker): `serve`
    # stores its hash as the token `bootstrap`, so the first start needs no other step.
    bootstrap_token_file: Path | None = None
    # `serve --insecure-no-auth`: every request acts as an all-scopes principal.
    insecure_no_auth: bool = False
    # Concurrent streams one token may hold open (429 beyond).
    max_streams_per_token: int = 100
    # Tables without branch_id that branch-pinned tokens may read (comma-separated).
    pinned_shared_tables: Names = ()
    # How long a write's Idempotency-Key is remembered (a repeat replays its response).
    idempotency_ttl_s: float = 24 * 3600.0
    # Largest CSV body `POST /api/<resource>` imports (413 beyond); docs/writes.md.
    import_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    # Retention inside `serve` (docs/audit.md): remove sequenced changes older than this
    # (30d, 12h, ...) every `retention_interval_s`; unset, serve removes nothing.
    retention_keep: Annotated[timedelta | None, BeforeValidator(_duration)] = None
    retention_interval_s: float = 3600.0
    retention_batch: int = Field(default=10_000, ge=1)
    # Browser origins allowed to call the API and read the stream (comma-separated).
    cors_origins: Names = ()
    # Pushed mutation ids are forgotten after this (30d, 12h, ...); a resend after that is
    # still recognised in the log while the log keeps the change (docs/writes.md).
    mutation_ttl: Annotated[timedelta, BeforeValidator(_duration)] = timedelta(days=30)
    # Requests per second one token (auth off: one client address) may make in each server
    # process, with bursts of `rate_limit_burst`; 429 beyond. 0 turns the limit off.
    rate_limit_per_s: float = Field(default=100.0, ge=0)
    rate_limit_burst: int = Field(default=200, ge=1)
    # With it set, GET /metrics needs `Authorization: Bearer <this value>` (docs/operations.md).
    metrics_token: str | None = None
    # Scale-out through NATS JetStream (docs/scale-out.md): with a broker URL, `serve`
    # is a gateway fed by the stream, and `pgtide relay` publishes the log to it.
    broker_url: str | None = None
    broker_stream: str = Field(default="PGTIDE", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    broker_max_age: Annotated[timedelta, BeforeValidator(_duration)] = timedelta(hours=1)
