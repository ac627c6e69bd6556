"""Structured logs: a real `pgtide serve` with its stderr captured (not a terminal, so JSON).

One line per request with the route template, state lines from the listener and
the sequencer with structured fields, and never a token or a row's data, however
the token was sent and whichever way the row was written.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import pytest

from api.logs import JsonFormatter, TextFormatter, scrub, setup_logging
from cdc import db, tokens
from tests.live import Server, Stream


class LoggedServer(Server):
    """A `pgtide serve` whose stderr goes to a file."""

    def __init__(self, url: str, log_path: Path, **kw: Any) -> None:
        super().__init__(url, **kw)
        self.log_path = log_path

    def start(self, timeout: float = 30, stderr: IO[bytes] | None = None) -> LoggedServer:
        """Start it with stderr to `log_path` (whatever `stderr` says)."""
        with self.log_path.open("wb") as log:
            super().start(timeout, stderr=log)
        return self

    def lines(self) -> list[dict[str, Any]]:
        """Every line of stderr, each parsed as JSON (failing on one that is not)."""
        text = self.log_path.read_text()
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a log line is not JSON: {line!r}")
        return out


def admin_token(url: str, name: str) -> str:
    with db.connect(url) as conn:
        return tokens.create(conn, name=name, scopes=["admin"], branch_id=None,
                             expires_in=None, pepper=None)  # fmt: skip


@pytest.fixture
def logged(db_url: str) -> Iterator[LoggedServer]:
    admin_token(db_url, "bootstrap")
    folder = Path(tempfile.mkdtemp(prefix="pgtide-log-"))
    path = folder / "stderr"
    # DEBUG: the most the server ever says, every library included.
    srv = LoggedServer(
        db_url,
        path,
        auth=True,
        env={"PGTIDE_LOG_LEVEL": "DEBUG", "PGTIDE_RECONNECT_BASE_S": "0.05"},
    )
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(folder, ignore_errors=True)  # nothing left in /tmp


def test_json_lines_one_per_request_no_tokens_no_row_data(
    logged: LoggedServer, db_url: str
) -> None:
    token = admin_token(db_url, "logs-admin")
    secret = f"Zq{uuid.uuid4().hex}"  # a distinctive value, written into rows
    bogus = f"pgt_{uuid.uuid4().hex}{uuid.uuid4().hex}"  # a wrong token, sent too
    bearer = {"Authorization": f"Bearer {token}"}
    base = logged.base
    requests: list[tuple[str, str, int]] = []  # (method, route template, status) we expect

    stream = Stream(base, f"/events?tables=branches,clients&access_token={token}")
    assert stream.status == 200
    stream.until("synced")
    with httpx.Client(base_url=base, timeout=10) as http:

        def call(method: str, path: str, route: str, status: int, **kw: Any) -> httpx.Response:
            r = http.request(method, path, **kw)
            assert r.status_code == status, r.text
            requests.append((method, route, status))
            return r

        branch = call("POST", "/api/branches", "/api/branches", 201, headers=bearer,
                      json={"code": secret[:30], "name": secret, "city": secret})  # fmt: skip
        bid = branch.json()["data"]["id"]
        call("POST", "/api/clients", "/api/clients", 201, headers=bearer,
             json={"branch_id": bid, "full_name": secret, "notes": secret})  # fmt: skip
        # `?access_token=` counts only on the stream; elsewhere it is refused, and not logged.
        call("GET", f"/api/branches/{bid}?access_token={token}", "/api/branches/{id}", 401)
        call("GET", f"/api/branches/{bid}", "/api/branches/{id}", 200, headers=bearer)
        call("GET", f"/api/clients?full_name=eq.{secret}&search={secret}", "/api/clients", 200,
             headers=bearer)  # fmt: skip
        call("PATCH", f"/api/branches/{bid}", "/api/branches/{id}", 200, headers=bearer,
             json={"city": secret + "-2"})  # fmt: skip
        # Refusals that quote values in the database's or pydantic's messages.
        call("POST", "/api/branches", "/api/branches", 409, headers=bearer,
             json={"code": secret[:30], "name": secret})  # fmt: skip
        call("POST", "/api/clients", "/api/clients", 422, headers=bearer,
             json={"branch_id": bid, "full_name": 12, "email": secret})  # fmt: skip
        call(
            "GET", "/api/clients", "/api/clients", 401, headers={"Authorization": f"Bearer {bogus}"}
        )
        call("GET", f"/api/clients?access_token={bogus}", "/api/clients", 401)
        call("GET", f"/nowhere/{secret}?access_token={token}", "unmatched", 404)
        call("GET", "/metrics", "/metrics", 200)

    # A write made with SQL reaches the stream like any other; the server logs none of it.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE clients SET notes = %s WHERE branch_id = %s", (secret + "-sql", bid))
        # Cut the listener's connection: it logs the state changes (reconnecting, following).
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() "
                     "AND application_name LIKE 'pgtide-listener-%'")  # fmt: skip
    got = stream.changes(4, timeout=15)  # branch insert, client insert, branch patch, sql update
    assert any(secret in json.dumps(e) for e in got)
    stream.close()
    logged.wait_ready()
    logged.stop()  # flushes everything, and the stream's line is written when it ended

    lines = logged.lines()
    text = logged.log_path.read_text()
    assert token not in text and token[4:] not in text, "a token reached the log"
    assert bogus not in text, "a wrong token reached the log"
    assert secret not in text, "row data reached the log"
    assert "access_token=" not in text

    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= line.keys(), line

    http_lines = [x for x in lines if x["logger"] == "pgtide.http"]
    for x in http_lines:
        assert isinstance(x["duration_ms"], float | int) and x["duration_ms"] >= 0, x
        assert isinstance(x["status"], int) and isinstance(x["bytes"], int), x
    seen = [(x["method"], x["route"], x["status"]) for x in http_lines]
    # One line per request: each of ours exactly once (plus /ready polls and the stream).
    for want in set(requests):
        assert seen.count(want) == requests.count(want), (want, seen)
    assert ("GET", "/events", 200) in seen
    assert {x[1] for x in seen} <= {
        "/ready", "/events", "/metrics", "/api/branches", "/api/branches/{id}",
        "/api/clients", "unmatched",
    }, seen  # fmt: skip

    # State changes carry structured fields.
    states = [(x["logger"], x.get("state"), x.get("seq")) for x in lines if "state" in x]
    assert any(lg == "cdc.sequencer" and st == "leader" and isinstance(sq, int)
               for lg, st, sq in states), states  # fmt: skip
    following = [sq for lg, st, sq in states if lg == "cdc.listener" and st == "following"]
    assert len(following) >= 2 and all(isinstance(s, int) for s in following), states
    assert any(lg == "cdc.listener" and st == "reconnecting" for lg, st, _ in states), states
    assert following[-1] >= following[0] + 4  # it resumed after the four changes


def test_text_on_a_terminal_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        for stream, kind in ((Tty(), TextFormatter), (io.StringIO(), JsonFormatter)):
            setup_logging("info", stream)
            assert len(root.handlers) == 1
            assert isinstance(root.handlers[0].formatter, kind)
            logging.getLogger("cdc.listener").info(
                "listener: following from seq %s", 7, extra={"state": "following", "seq": 7}
            )
            out = stream.getvalue().strip()
            if kind is JsonFormatter:
                line = json.loads(out)
                assert line["msg"] == "listener: following from seq 7"
                assert (line["state"], line["seq"], line["level"]) == ("following", 7, "INFO")
                assert line["ts"].endswith("+00:00")
            else:
                assert "INFO cdc.listener: listener: following from seq 7" in out
                assert out.endswith("state=following seq=7")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


MESSAGE = "duplicate key\nDETAIL:  Key (email)=(ann" + "@example.org) already exists."


def test_exception_text_loses_the_values_it_quotes() -> None:
    try:
        raise RuntimeError(MESSAGE)
    except RuntimeError:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("pgtide.test.exc")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.exception("boom")
        finally:
            logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["exc_type"] == "RuntimeError" and "duplicate key" in line["exc"]
    assert "ann@example.org" not in line["exc"] and "DETAIL: [redacted]" in line["exc"]
    assert "input_value= [redacted]" in scrub("x [type=int_type, input_value='s', input_type=str]")
