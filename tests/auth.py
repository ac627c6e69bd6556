"""Tokens for tests, and the `world` of the auth tests: a server with auth on, branches
A and B, and a token of every kind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

from cdc import db, tokens
from tests.live import Server

# Token kinds of the world, and the scopes each is created with ("bad" is no token at
# all, "expired" and "revoked" are made so after creation, "A" and "B" are pinned).
SCOPES = {
    "expired": "read,write,audit", "revoked": "admin", "read": "read", "write": "write",
    "audit": "audit", "admin": "admin", "A": "read,write", "B": "read,write",
}  # fmt: skip


def make_token(
    url: str,
    name: str,
    scopes: str = "read",
    branch: str | None = None,
    expires_in: timedelta | None = None,
) -> str:
    """Create a token (`scopes` comma-separated, pinned to `branch` if given); its secret."""
    with db.connect(url) as conn:
        return tokens.create(
            conn, name=name, scopes=tokens.parse_scopes(scopes), branch_id=branch,
            expires_in=expires_in, pepper=None,
        )  # fmt: skip


class World:
    """A server with auth on, two branches, and a token of every kind."""

    def __init__(self, url: str, server: Server, branch: dict[str, str], tok: dict[str, str]):
        self.url, self.server, self.branch, self.tok = url, server, branch, tok

    def headers(self, kind: str) -> dict[str, str]:
        """The Authorization header of a token kind (none for "none")."""
        return {"Authorization": f"Bearer {self.tok[kind]}"} if kind in self.tok else {}

    def new_client(self, branch: str = "A", name: str = "Ann") -> str:
        """A new client row of `branch` ("A" or "B"), written in SQL; its id."""
        with db.connect(self.url) as conn:
            row = conn.execute(
                "INSERT INTO clients (branch_id, full_name) VALUES (%s, %s) RETURNING id::text",
                (self.branch[branch], name),
            ).fetchone()
        assert row is not None
        return str(row[0])


@contextlib.contextmanager
def world_on(url: str) -> Iterator[World]:
    """Branches A and B, a token of each kind of SCOPES, and a server with auth on."""
    with db.connect(url) as conn:
        rows = conn.execute(
            "INSERT INTO branches (code, name) VALUES ('A', 'A'), ('B', 'B') "
            "RETURNING code, id::text"
        ).fetchall()
    branch = {r[0]: r[1] for r in rows}
    tok = {"bad": "pgt_" + "x" * 43}
    for kind, scopes in SCOPES.items():
        tok[kind] = make_token(url, f"t-{kind}", scopes, branch.get(kind))
    with db.connect(url) as conn:
        conn.execute(
            "UPDATE pgtide.sync_tokens SET expires_at = now() - interval '1s' "
            "WHERE name = 't-expired'"
        )
        tokens.revoke(conn, "t-revoked")
    srv = Server(url, auth=True).start()
    try:
        yield World(url, srv, branch, tok)
    finally:
        srv.stop()
