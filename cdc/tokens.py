"""API tokens: creation, lookup by keyed hash, listing and revocation. No HTTP here.

A token is `pgt_` + 43 url-safe characters (32 random bytes). The database
keeps only BLAKE2b(token, key=pepper): with `PGTIDE_TOKEN_PEPPER` set, a copy
of the database alone cannot even test a guess.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from cdc.errors import ConfigError, PgtideError
from cdc.queries import queries
from cdc.timespec import parse_duration

SCOPES = ("read", "write", "audit", "admin")
PREFIX = "pgt_"
_DEFAULT_PEPPER = b"pgtide-token-v1"
# What `create` makes: the prefix and 43 url-safe characters (32 bytes in base64).
_WELL_FORMED = re.compile(r"pgt_[A-Za-z0-9_-]{43}")


class TokenError(PgtideError):
    """The token request is invalid."""


@dataclass(frozen=True)
class Token:
    """A token's record (never the token itself)."""

    id: int
    name: str
    scopes: tuple[str, ...]
    branch_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def hash_token(token: str, pepper: str | None) -> bytes:
    """The stored form of a token."""
    key = pepper.encode() if pepper else _DEFAULT_PEPPER
    return hashlib.blake2b(token.encode(), key=key[:64], digest_size=32).digest()


def well_formed(token: str) -> bool:
    """Whether `token` could be one `create` made; anything else is refused unlooked-up."""
    return _WELL_FORMED.fullmatch(token) is not None


def parse_lifetime(text: str) -> timedelta:
    """A token's lifetime: a positive duration in the one syntax of cdc/timespec (2h30m)."""
    try:
        lifetime = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"bad duration: {exc}") from None
    if lifetime <= timedelta(0):
        raise ConfigError(f"bad duration {text!r}: a token's lifetime must be positive")
    return lifetime


def parse_scopes(text: str) -> tuple[str, ...]:
    """`read,write` → ("read", "write"); unknown scopes are refused."""
    scopes = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        raise TokenError(f"unknown scope {bad[0]!r}" if bad else "at least one scope is needed")
    return scopes


def create(
    conn: psycopg.Connection[Any],
    *,
    name: str,
    scopes: tuple[str, ...],
    branch_id: str | None,
    expires_in: timedelta | None,
    pepper: str | None,
) -> str:
    """Create a token and return it: the only time it is ever seen."""
    token = PREFIX + secrets.token_urlsafe(32)
    branch_id = _tenant(branch_id)
    try:
        conn.execute(
            queries["token_create"],
            {
                "name": name,
                "hash": hash_token(token, pepper),
                "scopes": list(scopes),
                "branch": branch_id,
                "expires": expires_in,
            },
        )
    except psycopg.errors.UniqueViolation:
        raise TokenError(f"a token named {name!r} exists already") from None
    except psycopg.errors.CheckViolation:
        raise TokenError(f"bad token name {name!r}: use 1-64 of A-Z a-z 0-9 _ . @ -") from None
    return token


def _tenant(value: str | None) -> str | None:
    """A branch pin as stored: a uuid in its canonical spelling, other values as given.

    The pin is compared as each resource's tenant column's type (uuid, integer, text).
    """
    if value is None:
        return None
    if not value or len(value) > 200 or not value.isprintable():
        raise TokenError(f"bad branch {value!r}: 1-200 printable characters")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def revoke(conn: psycopg.Connection[Any], name: str) -> bool:
    """Revoke a token by name; False if there is no such active token."""
    row = conn.execute(queries["token_revoke"], {"name": name}).fetchone()
    return row is not None


def list_tokens(conn: psycopg.Connection[Any]) -> list[Token]:
    """Every token's record, newest first."""
    rows = conn.execute(queries["token_list"]).fetchall()
    return [Token(r[0], r[1], tuple(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


async def lookup(
    conn: psycopg.AsyncConnection[Any], token: str, pepper: str | None
) -> Token | None:
    """The active (unrevoked, unexpired) token record for a presented token."""
    cur = await conn.execute(queries["token_lookup"], {"hash": hash_token(token, pepper)})
    r = await cur.fetchone()
    return Token(r[0], r[1], tuple(r[2]), r[3], r[4], r[5], r[6]) if r else None


async def inactive(conn: psycopg.AsyncConnection[Any], ids: list[int]) -> set[int]:
    """Which of these token ids are revoked or expired now."""
    cur = await conn.execute(queries["token_inactive"], {"ids": ids})
    return {int(r[0]) for r in await cur.fetchall()}


BOOTSTRAP_NAME = "bootstrap"


def ensure_bootstrap(conn: psycopg.Connection[Any], token: str, pepper: str | None) -> bool:
    """Make `token` (read from a secret file) the admin token named `bootstrap`.

    For containers, where no one can run `pgtide token create` before the first
    start: the token is created when missing and its hash replaced when the secret
    changed (rotation). True if the database changed.
    """
    token = token.strip()
    if not well_formed(token):
        raise TokenError(
            f"the bootstrap token must be {PREFIX} and 43 url-safe characters, as tokens "
            "pgtide makes are (make one with: "
            "python -c 'import secrets; print(\"pgt_\" + secrets.token_urlsafe(32))')"
        )
    params = {"name": BOOTSTRAP_NAME, "hash": hash_token(token, pepper), "scopes": ["admin"]}
    cur = conn.execute(queries["token_bootstrap"], params)
    return cur.rowcount > 0
