"""The demo tokens of `pgtide demo`: replaced on every run (only their hashes are stored)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from api.apps import Registry
from cdc import tokens


@dataclass(frozen=True)
class DemoToken:
    """A demo token and what it may do."""

    name: str
    token: str
    scopes: tuple[str, ...]
    branch_code: str | None


DEMO_TOKENS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("demo-admin", ("admin",), None),
    ("demo-reader", ("read",), None),
    ("demo-auditor", ("read", "audit"), None),
    ("demo-lisbon", ("read", "write"), "LIS"),
)


def make_tokens(
    conn: psycopg.Connection[Any], pepper: str | None, registry: Registry
) -> list[DemoToken]:
    """Revoke earlier demo tokens (they cannot be shown again) and create fresh ones.

    A token pinned to a branch code gets the tenant value the app finds for it.
    """
    out = []
    with conn.transaction():
        conn.execute("DELETE FROM pgtide.sync_tokens WHERE name LIKE 'demo-%'")
        for name, scopes, code in DEMO_TOKENS:
            branch = registry.branch_lookup(conn, code) if code is not None else None
            value = tokens.create(
                conn, name=name, scopes=scopes, branch_id=branch, expires_in=None, pepper=pepper
            )
            out.append(DemoToken(name, value, scopes, code))
    return out
