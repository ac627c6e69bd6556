"""pgtide_client.Outbox against a real server: filled offline, killed mid-push, restarted.

The pushing process is a real subprocess, SIGKILLed while the server has applied
its first batch and the answer is held back by a proxy: the next process resends
that batch (`duplicate`), then sends the rest. Each mutation is applied once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc import db, tokens
from pgtide_client import Client, Outbox, OutboxError
from tests.live import Server
from tests.proxy import Proxy

CHILD = """
import json, sys
from pgtide_client import Client, Outbox, Unavailable

path, base, token, mode, branch = sys.argv[1:]
client = Client(base, token, attempts=1 if mode == "fill" else 4)
with client, Outbox(path, base, token, client_id="tablet-7", batch=3, client=client) as box:
    if mode == "fill":
        for i in range(6):
            box.enqueue("clients", "insert", data={"branch_id": branch, "full_name": f"Off {i}"})
        try:
            box.flush()
        except Unavailable:
            print("offline", len(box.records()), flush=True)
    else:
        print("pushing", flush=True)
        done = box.flush()
        print(json.dumps([r["status"] for r, _ in done.applied] + [len(box.records())]), flush=True)
"""


@pytest.fixture
def setup(db_url: str) -> Iterator[tuple[Server, str, str, psycopg.Connection[Any]]]:
    with db.connect(db_url) as conn:
        token = tokens.create(conn, name="tablet", scopes=("read", "write"), branch_id=None,
                              expires_in=None, pepper=None)  # fmt: skip
        row = conn.execute("INSERT INTO branches (code, name) VALUES ('OB', 'Outbox')"
                           " RETURNING id::text").fetchone()  # fmt: skip
        assert row is not None
        srv = Server(db_url, auth=True).start()
        try:
            yield srv, token, row[0], conn
        finally:
            srv.stop()


def test_an_outbox_killed_mid_push_applies_each_mutation_exactly_once(
    setup: tuple[Server, str, str, psycopg.Connection[Any]], tmp_path: Path
) -> None:
    srv, token, branch, sql = setup
    proxy = Proxy(srv.port)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = str(tmp_path / "outbox.sqlite3")

    def child(mode: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script), path, proxy.base, token, mode,
                                 branch], stdout=subprocess.PIPE, text=True)  # fmt: skip

    try:
        proxy.reject()  # offline: every connection fails
        fill = child("fill")
        out, _ = fill.communicate(timeout=60)
        assert fill.returncode == 0 and out.split() == ["offline", "6"]

        proxy.hold()  # the server applies the first batch; its answer never arrives
        first = child("push")
        assert first.stdout is not None and first.stdout.readline().strip() == "pushing"
        assert proxy.answered.wait(30)
        first.kill()
        first.wait(10)
        first.stdout.close()
        applied = sql.execute("SELECT count(*) FROM clients WHERE branch_id = %s",
                              (branch,)).fetchone()  # fmt: skip
        assert applied == (3,)

        proxy.forward()
        second = child("push")
        out, _ = second.communicate(timeout=60)
        assert second.returncode == 0
        assert out.splitlines()[-1] == json.dumps(["duplicate"] * 3 + ["applied"] * 3 + [0])
    finally:
        proxy.close()
    rows = sql.execute(
        "SELECT c.full_name, count(l.id), count(DISTINCT l.mutation_id), min(l.origin),"
        " min(l.actor) FROM clients c JOIN pgtide.sync_log l ON l.pk ->> 'id' = c.id::text"
        " WHERE c.branch_id = %s GROUP BY 1 ORDER BY 1",
        (branch,),
    ).fetchall()
    assert rows == [(f"Off {i}", 1, 1, "tablet-7", "tablet") for i in range(6)]


def test_conflicts_are_held_until_retried_and_the_file_belongs_to_one_sender(
    setup: tuple[Server, str, str, psycopg.Connection[Any]], tmp_path: Path
) -> None:
    srv, token, branch, _ = setup
    path = tmp_path / "outbox.sqlite3"
    with Client(srv.base, token) as pg, Outbox(path, srv.base, token, client=pg) as box:
        made = pg.create("clients", {"branch_id": branch, "full_name": "Bea"}).row
        pg.patch("clients", made["id"], {"notes": "head office"}, if_match=1)  # version 2
        mine = box.enqueue("clients", "update", id=made["id"], data={"notes": "tablet"},
                           base_version=1)  # fmt: skip
        done = box.flush()
        assert [r["status"] for r, _ in done.conflicts] == ["conflict"]
        held = box.records()
        assert [(r.mutation_id, r.state) for r in held] == [(mine.mutation_id, "conflict")]
        assert held[0].result is not None and held[0].result["row"]["version"] == 2
        assert box.flush().conflicts == []  # held: not sent again
        box.retry(mine.mutation_id, base_version=2)
        assert [r["status"] for r, _ in box.flush().applied] == ["applied"]
        assert box.records() == []
        assert pg.get("clients", made["id"]).row["notes"] == "tablet"
    with pytest.raises(OutboxError):
        Outbox(path, srv.base, token, client_id="another-tablet")
