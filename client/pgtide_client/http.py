"""The requests both clients make, and what their answers mean: no I/O here.

Writes get an `Idempotency-Key` of their own (a UUID) unless given one; the
key is made once per call and sent again on every retry of that call, so a
write whose answer was lost is replayed by the server, never applied twice.
Retried: network errors, 429, 502, 503 and 504, after a capped, jittered
backoff that a `Retry-After` header can lengthen. Any other answer is final.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from pgtide_client.errors import http_error
from pgtide_client.session import retry_after

RETRIED = frozenset({429, 502, 503, 504})
ATTEMPTS = 4
BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0

Row = dict[str, Any]
Key = str | int | uuid.UUID


@dataclass(frozen=True)
class Written:
    """A write's answer: the row (or rows), its transaction and its ETag."""

    data: Any
    txid: str | None
    etag: str | None
    replayed: bool  # the server answered from the Idempotency-Key: written by an earlier try
    status: int

    @property
    def row(self) -> Row:
        """The written row (for a single-row write)."""
        if not isinstance(self.data, dict):
            raise TypeError("this write returned several rows: use .data")
        return self.data


@dataclass(frozen=True)
class Fetched:
    """A row as read, with its ETag (pass it as `if_match` to write it back)."""

    row: Row
    etag: str | None


@dataclass(frozen=True)
class Call:
    """One request, with what its retries must repeat unchanged."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] | None = None
    params: Mapping[str, str] | None = None


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(obj: Any) -> bytes:
    """JSON as the API reads it: datetimes in ISO 8601, UUIDs and Decimals as strings."""
    return json.dumps(obj, default=_default, separators=(",", ":")).encode()


def path_of(resource: str, key: Key | None = None) -> str:
    """`/api/<resource>[/<key>]`, each segment quoted."""
    base = f"/api/{quote(resource, safe='')}"
    return base if key is None else f"{base}/{quote(str(key), safe='')}"


def etag_of(tag: int | str) -> str:
    """An If-Match value: a version (3 → `"3"`), an ETag as received, or `*`."""
    if isinstance(tag, int):
        return f'"{tag}"'
    return tag if tag == "*" or tag.startswith(('"', "W/")) else f'"{tag}"'


def write(
    method: str,
    path: str,
    data: Any,
    *,
    if_match: int | str | None,
    idempotency_key: str | None,
) -> Call:
    """A write with its Idempotency-Key (made here when not given) and If-Match."""
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    if if_match is not None:
        headers["If-Match"] = etag_of(if_match)
    body = None
    if data is not None:
        body = dumps(data)
        headers["Content-Type"] = "application/json"
    return Call(method, path, body, headers)


def outcome(response: httpx.Response) -> Any:
    """The answer's JSON body; HTTPError (the matching subclass) when it is a refusal."""
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = None
        if not isinstance(problem, dict):
            problem = {"status": response.status_code, "detail": response.text[:500]}
        raise http_error(response.status_code, problem)
    return response.json() if response.content else None


def written(response: httpx.Response) -> Written:
    body = outcome(response) or {}
    return Written(
        body.get("data"), body.get("txid"), response.headers.get("etag"),
        response.headers.get("idempotent-replayed") == "true", response.status_code,
    )  # fmt: skip


def fetched(response: httpx.Response) -> Fetched:
    body = outcome(response)
    return Fetched(body["data"], response.headers.get("etag"))


def should_retry(response: httpx.Response | None, attempt: int, attempts: int) -> float | None:
    """Seconds to wait before trying again (None: do not)."""
    if attempt + 1 >= attempts:
        return None
    if response is not None and response.status_code not in RETRIED:
        return None
    delay = min(MAX_BACKOFF_S, BACKOFF_S * 2.0**attempt * random.uniform(0.8, 1.2))
    floor = retry_after(response.headers) if response is not None else None
    return delay if floor is None else max(delay, min(floor, MAX_BACKOFF_S))
