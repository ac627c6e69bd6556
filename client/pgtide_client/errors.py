"""The client's one error tree.

    PgtideClientError
     ├── HTTPError            the server refused a request (its problem+json in `problem`)
     │    ├── NotFound            404: no such resource or row (or another branch's)
     │    ├── Conflict            409: a duplicate key, a referenced row
     │    ├── PreconditionFailed  412: a stale If-Match; `current` is the server's row
     │    └── Invalid             422: the body was refused; `errors` names the fields
     ├── Unavailable          the server could not be reached, or answered 5xx/429, too often
     ├── TxidTimeout          await_txid gave up (also a TimeoutError)
     └── OutboxError          an outbox file used by another sender than the one it was made for

A subscription raises HTTPError only for a final refusal (400, 401, 403, 404):
everything else is retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PgtideClientError(Exception):
    """Something went wrong talking to pgtide."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class HTTPError(PgtideClientError):
    """The server refused the request."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.detail: str = str(problem.get("detail") or problem.get("title") or status)
        super().__init__(f"{status}: {self.detail}")


class NotFound(HTTPError):
    """404: no such resource or row."""


class Conflict(HTTPError):
    """409: the write conflicts with a row (a duplicate key, a referencing row)."""


class PreconditionFailed(HTTPError):
    """412: If-Match was stale; `current` is the row as it is now, `etag` its tag."""

    @property
    def current(self) -> dict[str, Any] | None:
        row = self.problem.get("current")
        return dict(row) if isinstance(row, Mapping) else None


class Invalid(HTTPError):
    """422: the body was refused; `errors` lists `{field, message}`."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.problem.get("errors") or [])


class Unavailable(PgtideClientError):
    """The server could not be reached or kept answering 5xx or 429."""


class TxidTimeout(PgtideClientError, TimeoutError):
    """No change of this transaction arrived in time."""


class OutboxError(PgtideClientError):
    """The outbox cannot be used as asked."""


_BY_STATUS: dict[int, type[HTTPError]] = {
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    422: Invalid,
}


def http_error(status: int, problem: Mapping[str, Any]) -> HTTPError:
    """The HTTPError subclass for a status."""
    return _BY_STATUS.get(status, HTTPError)(status, problem)
