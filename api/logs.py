"""Structured logs: JSON lines on stderr when it is not a terminal, plain text on one.

Every record becomes one line. In JSON, a line carries `ts` (UTC, ISO 8601),
`level`, `logger`, `msg`, and every structured field the record was given with
`extra=` (`state`, `seq`, `route`, ...); an exception adds `exc_type` and `exc`
(the traceback). On a terminal the same fields follow the message as `k=v`.

`RequestLog` writes one line per HTTP request, when its response is done (for a
stream, when the client goes): method, route *template* (`/api/{resource}/{id}`
style, never the path or the query string, which may carry `access_token=`),
status, duration and bytes sent. Request and response bodies are never logged,
so neither tokens nor row data reach a log line from here. Exception text loses the
values PostgreSQL and pydantic quote (`scrub`), and sse-starlette's per-chunk DEBUG
lines (row data) are never enabled. docs/reliability.md describes the format.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}  # uvicorn's copy of the message with terminal colours

access = logging.getLogger("pgtide.http")


# Parts of an exception's text that quote data: PostgreSQL's DETAIL line (`Key (email)=(...)
# already exists`) and pydantic's `input_value=...`.
_DATA_IN_ERRORS = re.compile(r"^(\s*DETAIL:).*$|(input_value=).*?(?=, input_type=|\]$|$)", re.M)


def scrub(text: str) -> str:
    """An exception's text without the values it quotes."""
    return _DATA_IN_ERRORS.sub(lambda m: (m.group(1) or m.group(2)) + " [redacted]", text)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record was given with `extra=`."""
    items = record.__dict__.items()
    return {k: v for k, v in items if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields_of(record).items():
            line.setdefault(key, value)
        if record.exc_info and record.exc_info[0] is not None:
            line["exc_type"] = record.exc_info[0].__name__
            line["exc"] = scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = scrub(record.exc_text)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message k=v ...` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatException(self, ei: Any) -> str:
        return scrub(super().formatException(ei))

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        extra = fields_of(record)
        if extra:
            text += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return text


def setup_logging(level: str | int, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr): JSON lines unless it is a terminal. Replaces root handlers."""
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    isatty = getattr(out, "isatty", None)
    handler.setFormatter(TextFormatter() if isatty is not None and isatty() else JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # sse-starlette logs every chunk it sends at DEBUG: that is row data. Never below INFO.
    logging.getLogger("sse_starlette").setLevel(max(logging.INFO, root.level))


class RequestLog:
    """Pure ASGI middleware: one `pgtide.http` line per request, when its response is done.

    `routes` maps an endpoint to its path template (what Starlette matched); a
    request refused before routing is matched here, and one that matches no route
    is logged as `unmatched`, so a path typed by a client never reaches the log.
    """

    def __init__(self, app: ASGIApp, routes: dict[Any, str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts
        sent = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if access.isEnabledFor(logging.INFO):
                template = self.routes.get(scope.get("endpoint")) or _template(scope)
                route = route_name(scope, template)
                ms = round((time.perf_counter() - started) * 1000, 2)
                client = scope.get("client")
                access.info(
                    "%s %s %d %.1fms", scope["method"], route, status, ms,
                    extra={"method": scope["method"], "route": route, "status": status,
                           "duration_ms": ms, "bytes": sent,
                           "client": client[0] if client else None},
                )  # fmt: skip


def route_name(scope: Scope, template: str) -> str:
    """The template with the resource filled in when it is a served one (`/api/clients/{id}`).

    Made-up resource names stay `{resource}`: metrics' labels must stay a bounded set.
    """
    if "{resource}" not in template:
        return template
    name = (scope.get("path_params") or {}).get("resource")
    state = scope.get("state") or {}
    registry = state.get("registry") if isinstance(state, dict) else None
    if isinstance(name, str) and registry is not None and registry.get(name) is not None:
        return template.replace("{resource}", name)
    return template


def _template(scope: Scope) -> str:
    """The template of the route a request was for, when no endpoint ran (refused by the
    auth middleware before routing, say); `unmatched` when no route has its path."""
    app = scope.get("app")
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, child = route.matches({**scope, "type": "http"})
        if match is not Match.NONE:
            scope.setdefault("path_params", child.get("path_params", {}))
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"
