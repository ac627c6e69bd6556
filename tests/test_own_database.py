"""pgtide on a database of one's own: the README's commands, verbatim, and its app file.

The database already holds tables named like the shipped app's and the engine's
(`clients`, `orders`, `products`, `branches`, `sync_log`, in `public`): migrate
must leave them and their rows as they are, twice over; track, stream, sync-log,
history and `audit verify` must work on a table of the user's; no demo resource
is served. Then the app of README (docs/examples/shop_app.py, shown there whole)
serves `/api/shipments`: a bigserial key, no version column, no tenant column.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from cdc import db
from tests.conftest import drop_database, with_dbname
from tests.live import Server, Stream, free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
APP_FILE = ROOT / "docs" / "examples" / "shop_app.py"

USER_SCHEMA = """
CREATE TABLE clients (id int PRIMARY KEY, name text);
CREATE TABLE orders (id int PRIMARY KEY, client int REFERENCES clients, total numeric);
CREATE TABLE products (id text PRIMARY KEY);
CREATE TABLE branches (id int PRIMARY KEY, city text);
CREATE TABLE sync_log (id int PRIMARY KEY, line text);
CREATE TABLE shipments (id bigserial PRIMARY KEY, reference text NOT NULL UNIQUE,
                        weight_kg numeric(8, 2), delivered boolean NOT NULL DEFAULT false);
INSERT INTO clients VALUES (1, 'Ada'), (2, 'Grace');
INSERT INTO orders VALUES (10, 1, 9.5);
INSERT INTO products VALUES ('p-1');
INSERT INTO branches VALUES (7, 'Porto');
INSERT INTO sync_log VALUES (1, 'my own log');
"""


def block(marker: str, lang: str) -> str:
    """The fenced block between `<!-- marker:start -->` and `<!-- marker:end -->`."""
    found = re.search(
        rf"<!-- {marker}:start -->\n```{lang}\n(.*?)```\n<!-- {marker}:end -->", README, re.S
    )
    assert found, f"README has no {marker} block"
    return found.group(1)


def public_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Every table of public, with its columns and rows."""
    tables = [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]  # fmt: skip
    state: dict[str, Any] = {}
    for table in tables:
        cols = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        rows = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(
            sql.Identifier("public", table))).fetchall()  # fmt: skip
        state[table] = (cols, rows)
    return state


@pytest.fixture
def shop(server_url: str) -> Iterator[str]:
    name = f"pgtide_shop_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(server_url, name)
    with db.connect(url) as conn:
        conn.execute(USER_SCHEMA.encode())
    try:
        yield url
    finally:
        drop_database(server_url, name)


def pgtide_cli(*args: str, url: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "PGTIDE_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "api.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_the_readme_commands_on_a_database_with_colliding_names(shop: str, tmp_path: Path) -> None:
    commands = block("own-database", "sh")
    assert len(commands.strip().splitlines()) <= 5
    with db.connect(shop) as conn:
        before = public_state(conn)
    port = free_port()
    # The block verbatim, but for the URL (the test's database) and the port.
    script = re.sub(r"^export DATABASE_URL=.*$", "", commands, flags=re.M)
    bindir = Path(sys.executable).parent
    env = {**os.environ, "DATABASE_URL": shop, "PGTIDE_PORT": str(port),
           "PGTIDE_LOG_LEVEL": "WARNING", "PATH": f"{bindir}:{os.environ['PATH']}"}  # fmt: skip
    assert shutil.which("pgtide", path=env["PATH"]), "the pgtide command is not installed"
    proc = subprocess.Popen(["bash", "-euc", script], env=env, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = []
        while not (lines and lines[-1].startswith("pgt_")):  # `token create` prints the token
            line = proc.stdout.readline()
            assert line, f"the commands ended early: {lines}"
            lines.append(line.strip())
        token = lines[-1]
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, proc, 60)
        auth = {"Authorization": f"Bearer {token}"}
        stream = Stream(base, "/events?tables=shipments", auth)
        try:
            with db.connect(shop) as conn:
                conn.execute("INSERT INTO shipments (reference, weight_kg) VALUES ('S-1', 2.5)")
                conn.execute("UPDATE shipments SET delivered = true WHERE reference = 'S-1'")
            changes = stream.changes(2)
        finally:
            stream.close()
        assert [(c["table"], c["op"]) for c in changes] == [("shipments", "INSERT"),
                                                            ("shipments", "UPDATE")]  # fmt: skip
        assert changes[1]["changed"] == ["delivered"]
        shipment = changes[0]["pk"]["id"]
        log = httpx.get(f"{base}/api/sync-log?table=shipments", headers=auth, timeout=30)
        assert log.status_code == 200, log.text
        assert [c["op"] for c in log.json()["changes"]] == ["INSERT", "UPDATE"]
        history = httpx.get(f"{base}/api/shipments/{shipment}/history", headers=auth, timeout=30)
        assert history.status_code == 200, history.text
        assert len(history.json()["history"]) == 2
        # No resource of the shipped app is served on this database.
        for path in ("/api/clients", "/api/orders", "/api/branches"):
            got = httpx.get(base + path, headers=auth, timeout=30)
            assert got.status_code == 404, (path, got.text)
        verified = pgtide_cli("audit", "verify", url=shop)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    # Migrating again changes nothing, and public is as it was, but for the shipments written.
    again = pgtide_cli("migrate", url=shop)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr
    with db.connect(shop) as conn:
        after = public_state(conn)
        assert {k: v for k, v in after.items() if k != "shipments"} == {
            k: v for k, v in before.items() if k != "shipments"}  # fmt: skip
        assert after["shipments"][0] == before["shipments"][0]
        tracked = conn.execute("SELECT schema_name, table_name FROM pgtide.sync_tracked")
        assert tracked.fetchall() == [("public", "shipments")]
        assert conn.execute("SELECT count(*) FROM pgtide.sync_apps").fetchone() == (0,)


def test_the_readme_app_file_serves_an_existing_table(shop: str, tmp_path: Path) -> None:
    shown = block("shop-app", "python")
    assert shown == APP_FILE.read_text(encoding="utf-8")  # README shows the whole file
    (tmp_path / "shop_app.py").write_text(shown, encoding="utf-8")
    installed = pgtide_cli("migrate", "--app", "shop_app:app", url=shop, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    assert "installed app shop" in installed.stdout
    server = Server(shop, cwd=tmp_path).start()
    http = httpx.Client(base_url=server.base, timeout=30)
    try:
        made = http.post("/api/shipments", json={"reference": "S-9", "weight_kg": 12})
        assert made.status_code == 201, made.text
        row = made.json()["data"]
        assert isinstance(row["id"], int) and row["delivered"] is False
        tag = made.headers["etag"]
        assert made.headers["location"] == f"/api/shipments/{row['id']}"
        got = http.get(f"/api/shipments/{row['id']}")
        assert got.status_code == 200 and got.headers["etag"] == tag
        assert (
            http.get(f"/api/shipments/{row['id']}", headers={"If-None-Match": tag}).status_code
            == 304
        )
        assert http.get("/api/shipments/not-a-number").status_code == 404
        # If-Match with the row's ETag (a hash of its image: the table has no version).
        stale = http.patch(f"/api/shipments/{row['id']}", json={"delivered": True},
                           headers={"If-Match": '"h0"'})  # fmt: skip
        assert stale.status_code == 412, stale.text
        done = http.patch(f"/api/shipments/{row['id']}", json={"delivered": True},
                          headers={"If-Match": tag})  # fmt: skip
        assert done.status_code == 200, done.text
        assert done.headers["etag"] != tag and done.json()["data"]["delivered"] is True
        again = http.patch(
            f"/api/shipments/{row['id']}", json={"weight_kg": 1}, headers={"If-Match": tag}
        )  # the old tag is stale now
        assert again.status_code == 412
        listed = http.get("/api/shipments?delivered=eq.true&order=reference")
        assert [r["reference"] for r in listed.json()["data"]] == ["S-9"]
        dup = http.post("/api/shipments", json={"reference": "S-9"})
        assert dup.status_code == 409, dup.text
        bad = http.post("/api/shipments", json={"reference": "S-10", "colour": "red"})
        assert bad.status_code == 422
        # Offline push: lww on a table without version, and version through the base ETag.
        current = http.get(f"/api/shipments/{row['id']}").headers["etag"]
        pushed = http.post("/api/sync/push", json={"client_id": "dock-1", "mutations": [
            {"mutation_id": "a", "resource": "shipments", "op": "update", "id": row["id"],
             "data": {"weight_kg": 3}, "base_etag": current},
            {"mutation_id": "b", "resource": "shipments", "op": "update", "id": row["id"],
             "data": {"weight_kg": 4}, "base_etag": current},
        ]})  # fmt: skip
        assert [r["status"] for r in pushed.json()["results"]] == ["applied", "conflict"]
        lww = http.post("/api/sync/push", json={"client_id": "dock-1", "policy": "lww",
                                                "mutations": [
            {"mutation_id": "c", "resource": "shipments", "op": "update", "id": row["id"],
             "data": {"weight_kg": 5}, "client_ts": "2999-01-01T00:00:00Z"},
            {"mutation_id": "d", "resource": "shipments", "op": "update", "id": row["id"],
             "data": {"weight_kg": 6}, "client_ts": "2001-01-01T00:00:00Z"},
            {"mutation_id": "c", "resource": "shipments", "op": "update", "id": row["id"],
             "data": {"weight_kg": 5}, "client_ts": "2999-01-01T00:00:00Z"},
        ]})  # fmt: skip
        assert lww.status_code == 200, lww.text
        assert [r["status"] for r in lww.json()["results"]] == ["applied", "conflict", "duplicate"]
        gone = http.delete(f"/api/shipments/{row['id']}")
        assert gone.status_code == 200 and gone.json()["data"]["weight_kg"] == 5
        assert http.get("/api/clients").status_code == 404
    finally:
        http.close()
        server.stop()
    with db.connect(shop) as conn:
        ops = conn.execute("SELECT op FROM pgtide.sync_log WHERE table_name = 'shipments'"
                           " ORDER BY id").fetchall()  # fmt: skip
    assert [o[0] for o in ops] == ["INSERT", "UPDATE", "UPDATE", "UPDATE", "DELETE"]
