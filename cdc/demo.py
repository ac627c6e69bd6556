"""The demo data set and demo tokens of `pgtide demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

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


def load_data(conn: psycopg.Connection[Any]) -> bool:
    """Load the demo data set once; False if branches already hold data."""
    row = conn.execute("SELECT count(*) FROM branches").fetchone()
    if row and row[0] > 0:
        return False
    text = (Path(__file__).with_name("demo.sql")).read_text(encoding="utf-8")
    with conn.transaction():
        conn.execute(text.encode())  # bytes: several statements, no placeholders
    return True


def make_tokens(conn: psycopg.Connection[Any], pepper: str | None) -> list[DemoToken]:
    """Revoke earlier demo tokens (they cannot be shown again) and create fresh ones."""
    out = []
    with conn.transaction():
        conn.execute("DELETE FROM sync_tokens WHERE name LIKE 'demo-%'")
        for name, scopes, code in DEMO_TOKENS:
            branch = None
            if code is not None:
                found = conn.execute("SELECT id::text FROM branches WHERE code = %s", (code,))
                r = found.fetchone()
                branch = r[0] if r else None
            value = tokens.create(
                conn, name=name, scopes=scopes, branch_id=branch, expires_in=None, pepper=pepper
            )
            out.append(DemoToken(name, value, scopes, code))
    return out
