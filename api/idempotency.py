"""`Idempotency-Key` on writes: the first response is remembered and replayed.

The key is claimed (a row in `pgtide.sync_idempotency`) at the start of the write's
transaction and the response stored before it commits, so a key is
remembered exactly when its write committed; a concurrent request with the
same key waits on the claim and then replays. A refused write (4xx) rolls
back and leaves no key behind, so the client may correct it and retry with
the same key. Keys are scoped by actor and expire after `idempotency_ttl_s`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from starlette.requests import Request
from starlette.responses import Response

from api.errors import ApiError
from api.queries import queries

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Reply:
    """A successful write's response, as sent and as remembered: JSON body bytes."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def response(self, *, replayed: bool = False) -> Response:
        """The HTTP response; a replay says so in `Idempotent-Replayed`."""
        headers = {**self.headers, **({"Idempotent-Replayed": "true"} if replayed else {})}
        return Response(self.body, self.status, headers, media_type="application/json")


def key_of(request: Request) -> str | None:
    """The request's Idempotency-Key (400 if it is empty or too long)."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise ApiError(400, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters")
    return key


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What "the same request" means for a key: method, path and body bytes."""
    digest = hashlib.sha256(method.encode() + b"\0" + path.encode() + b"\0" + body)
    return digest.hexdigest()


async def claim(
    conn: psycopg.AsyncConnection[Any], scope: str, key: str, fp: str, ttl_s: float
) -> Reply | None:
    """Claim `key` in the current transaction (None), or the reply remembered for it.

    Raises 422 when the key was used for a different request.
    """
    params = {"scope": scope, "key": key, "fingerprint": fp, "ttl_s": ttl_s}
    cur = await conn.execute(queries["reserve_key"], params)
    if await cur.fetchone() is not None:
        await conn.execute(queries["purge_keys"])  # keyed writes pay for the clean-up
        return None
    cur = await conn.execute(queries["stored_response"], params)
    row = await cur.fetchone()
    assert row is not None  # committed by the transaction we waited for
    stored_fp, status, headers, body = row
    if stored_fp != fp:
        raise ApiError(
            422,
            "this Idempotency-Key was already used for a different request "
            "(another method, path or body); use a new key for a new request",
        )
    return Reply(status, body.encode(), dict(headers or {}))


async def remember(conn: psycopg.AsyncConnection[Any], scope: str, key: str, reply: Reply) -> None:
    """Store the reply under `key`, in the transaction of the write it answers."""
    await conn.execute(
        queries["remember_response"],
        {"scope": scope, "key": key, "status": reply.status,
         "headers": Jsonb(reply.headers), "body": reply.body.decode()},
    )  # fmt: skip
