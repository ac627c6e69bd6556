"""pgtide_client's rules without a network: the session (cursor, dedupe, backoff) and Replica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from httpx_sse import ServerSentEvent

from pgtide_client import Change, HTTPError, Replica, Reset, SnapshotStarted, StreamError, Synced
from pgtide_client.session import Session


def change(seq: int | None, op: str = "INSERT", **more: Any) -> dict[str, Any]:
    return {"cursor": None if seq is None else str(seq), "seq": seq, "txid": "9", "id": 1,
            "at": None, "schema": "public", "table": "t", "op": op, "pk": {"id": 1},
            "row": {"id": 1, "k": "in"}, "old": None, "changed": None, "actor": None,
            "origin": None, "mutation_id": None, **more}  # fmt: skip


def sse(data: dict[str, Any], id: str = "", event: str = "") -> ServerSentEvent:
    return ServerSentEvent(event=event, data=json.dumps(data), id=id)


def test_the_cursor_moves_with_ids_and_no_change_is_yielded_twice() -> None:
    s = Session(tables=["t"], filters={"k": "eq.in"}, snapshot=True)
    assert s.request().params == [("tables", "t"), ("k", "eq.in"), ("snapshot", "true")]
    assert s.opened() == [SnapshotStarted()]
    assert isinstance(s.receive(sse(change(None, "SNAPSHOT"))), Change)
    before_id = s.receive(sse(change(5)))  # sent before the hand-off: no id, no cursor
    assert isinstance(before_id, Change) and before_id.cursor is None and s.cursor is None
    assert s.receive(sse({"cursor": "7"}, id="7", event="synced")) == Synced("7")
    assert s.request().headers == {"Last-Event-ID": "7"}
    assert s.request().params == [("tables", "t"), ("k", "eq.in")] and s.opened() == []
    assert s.receive(sse(change(6), id="6")) is None  # at or below what was yielded
    got = s.receive(sse(change(8, left=True), id="8"))
    assert isinstance(got, Change) and got.left and got.cursor == "8" and s.cursor == "8"


def test_reset_forgets_the_cursor_and_since_and_errors_are_events() -> None:
    s = Session(since="3")
    assert s.request().params == [("since", "3")]
    reset = s.receive(sse({"reason": "old", "earliest": 40}, event="reset"))
    assert isinstance(reset, Reset) and reset.earliest == 40
    assert s.cursor is None and s.request().params == []  # from now: `since` no longer applies
    problem = {"status": 500, "detail": "x", "code": "filter_failed", "seq": 57}
    err = s.receive(sse(problem, event="error"))
    assert isinstance(err, StreamError) and (err.code, err.seq) == ("filter_failed", 57)
    with pytest.raises(HTTPError) as refused:
        s.refused(401, b'{"status": 401, "detail": "bad token"}')
    assert refused.value.detail == "bad token"
    s.refused(503, b"")  # not final: retried


def test_backoff_starts_at_retry_doubles_with_jitter_and_is_capped() -> None:
    s = Session(max_backoff=5, jitter=lambda: 1.0)
    s.receive(ServerSentEvent(retry=200))
    assert [s.failed("x").delay for _ in range(6)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5]
    assert s.failed("x", retry_after=30).delay == 5
    s.receive(sse({"cursor": "1"}, id="1", event="synced"))
    assert s.failed("x").delay == 0.2  # live again: from the start


def test_a_persisted_replica_commits_rows_with_their_cursor(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    ev = lambda seq, op, **m: Change.from_json(change(seq, op, **m), str(seq))  # noqa: E731
    with Replica(path) as r:
        r.bind("sig")
        r.apply(SnapshotStarted())
        r.apply(Change.from_json(change(None, "SNAPSHOT")))
        r.apply(Synced("4"))
        r.apply(ev(5, "INSERT", pk={"id": 2}, row={"id": 2}))
        r.apply(ev(6, "UPDATE", pk={"id": 3}, row={"id": 3}, old={"id": 2}))  # key changed
        assert sorted(x["id"] for x in r.rows("t")) == [1, 3]
        r.apply(SnapshotStarted())  # a new snapshot, killed before its `synced`
        r.apply(Change.from_json(change(None, "SNAPSHOT", pk={"id": 9}, row={"id": 9})))
    with Replica(path) as r:
        assert r.cursor == "6" and sorted(x["id"] for x in r.rows("public.t")) == [1, 3]
        r.apply(ev(7, "UPDATE", left=True))
        r.apply(ev(8, "TRUNCATE", pk=None, row=None))
        assert r.rows("t") == [] and r.cursor == "8"
        r.bind("another selection")
        assert r.cursor is None
