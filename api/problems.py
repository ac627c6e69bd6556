"""RFC 9457 problem documents, and the handlers that turn exceptions into them."""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

PROBLEM_JSON = "application/problem+json"

# A stable, machine-readable `code` in every problem body, by status unless the error
# names a narrower one (the stream's `error` event: filter_failed, snapshot_timeout, ...).
CODES: Mapping[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 412: "precondition_failed",
    413: "too_large", 415: "unsupported_media_type", 422: "invalid", 429: "rate_limited",
    500: "internal", 503: "unavailable",
}  # fmt: skip


def code_of(status: int) -> str:
    """The default `code` of a status."""
    return CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_"))


class ProblemResponse(JSONResponse):
    """An RFC 9457 problem document."""

    media_type = PROBLEM_JSON


def problem(
    status: int, detail: str, *, headers: Mapping[str, str] | None = None
) -> ProblemResponse:
    """A problem+json response; `type` is about:blank, so `title` is the status phrase."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code_of(status),
    }
    return ProblemResponse(body, status_code=status, headers=headers)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPException (404, 405, ...) as problem+json."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in {204, 304}:  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail = exc.detail
    # Starlette's own 404/405 carry only the status phrase: say what was asked for.
    if detail == HTTPStatus(exc.status_code).phrase:
        if exc.status_code == 404:
            detail = f"no resource at {request.url.path}"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
    return problem(exc.status_code, detail, headers=exc.headers)


async def unhandled(request: Request, exc: Exception) -> Response:
    """Anything unexpected: a 500 without internals."""
    # Starlette logs the traceback itself; the client gets no internals.
    return problem(500, "internal error; the server log has the details")
