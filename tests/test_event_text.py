"""Every path frames a change with the same bytes: PostgreSQL's text of its row images.

A table with a column of every kind the demo tables use (and the awkward ones:
numeric with trailing zeros and more digits than a double, float8's NaN and
exponents, escapes, non-ASCII, nested json) is written while one stream follows
live (the leader's batch) and then read again from cursor 0 (catch-up pages),
through a pinned view, and as a snapshot: the `data:` of each event must be
identical across paths and its `row` the very text of `to_jsonb(row)::text`
(docs/decisions.md, "Row images as PostgreSQL prints them").
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cdc import db
from tests.live import Server, Stream

TABLE = """
CREATE TABLE every_kind (
    id int PRIMARY KEY,
    branch_id uuid,
    price numeric(10, 2),
    exact numeric,
    ratio float8,
    small real,
    big bigint,
    flag boolean,
    note text,
    born date,
    at timestamptz,
    local timestamp,
    clock time,
    zoned timetz,
    span interval,
    doc jsonb,
    raw json,
    bytes bytea,
    tags text[],
    nums int[],
    addr inet
);
SELECT pgtide.track_v1('every_kind');
"""

ROWS = """
INSERT INTO every_kind VALUES
 (1, '11111111-1111-1111-1111-111111111111', 12.50, 0.1000000000000000055511151231257827,
  1e20, 0.1, 9007199254740993, true, E'quote " back \\\\ tab \\t nl \\n é 😀 \\u0001',
  '2026-12-01', '2026-12-01 10:30:00.120000+00', '2026-12-01 10:30:00', '23:59:59.5',
  '10:00+05:30', '1 day 02:03:04', '{"b": [1, 2.50, {"c": null}], "a": "x"}',
  '{"z":1,  "a" : [1,2]}', '\\xdeadbeef', ARRAY['a', 'b c', NULL], ARRAY[1, 2], '10.0.0.1/8'),
 (2, '22222222-2222-2222-2222-222222222222', 0, 'NaN', 'NaN', '-Infinity', -1, false, '',
  'infinity', '-infinity', 'infinity', '00:00', '00:00+00', '-1 mon', 'null', 'null', '',
  '{}', '{}', '::1'),
 (3, NULL, NULL, 1e-30, -0.0, 3.4e38, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL);
UPDATE every_kind SET price = price + 1, note = 'changed' WHERE id = 1;
UPDATE every_kind SET branch_id = '11111111-1111-1111-1111-111111111111' WHERE id = 2;
DELETE FROM every_kind WHERE id = 3;
"""
CHANGES = 6  # three inserts, two updates, one delete


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with db.connect(db_url) as conn:
        conn.execute(TABLE.encode())
        yield conn


@pytest.fixture
def server(db_url: str, sql: psycopg.Connection[Any]) -> Iterator[Server]:
    srv = Server(db_url).start()
    yield srv
    srv.stop()


def datas(stream: Stream, n: int) -> list[str]:
    """The `data:` text of the next `n` change events."""
    out: list[str] = []
    while len(out) < n:
        ev = stream.next()
        assert ev is not None, f"stream ended after {len(out)} of {n} changes"
        if ev.event == "message":
            out.append(ev.data)
    return out


def test_live_catch_up_and_snapshot_send_postgresql_s_text(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    live = Stream(server.base, "/events?tables=every_kind&since=now")
    try:
        live.until("synced")
        sql.execute(ROWS.encode())
        followed = datas(live, CHANGES)
    finally:
        live.close()

    again = Stream(server.base, "/events?tables=every_kind&since=0")
    try:
        caught_up = datas(again, CHANGES)
    finally:
        again.close()
    assert caught_up == followed  # byte for byte, the leader's batch and a catch-up page

    # A filtered subscriber's (the row images are decoded for it) bytes are the same.
    filtered = Stream(server.base, "/events?tables=every_kind&since=0&id=lte.2")
    try:
        kept = datas(filtered, CHANGES - 2)
    finally:
        filtered.close()
    assert kept == [d for d in followed if json.loads(d)["pk"] != {"id": 3}]

    events = [json.loads(d) for d in followed]
    inserted = {e["pk"]["id"]: d for e, d in zip(events, followed, strict=True)
                if e["op"] == "INSERT"}  # fmt: skip
    assert sorted(inserted) == [1, 2, 3]
    # The row as written: the logged image, as PostgreSQL prints it, spliced in unchanged.
    logged = dict(sql.execute(
        "SELECT (pk->>'id')::int, new_row::text FROM pgtide.sync_log"
        " WHERE table_name = 'every_kind' AND op = 'INSERT'"
    ).fetchall())  # fmt: skip
    for key, data in inserted.items():
        assert f',"row":{logged[key]},"old":null,' in data
    one = inserted[1]
    assert '"price": 12.50' in one  # numeric keeps its scale
    assert '"exact": 0.1000000000000000055511151231257827' in one  # and every digit
    assert '"ratio": 100000000000000000000' in one and '"big": 9007199254740993' in one
    assert json.loads(one)["row"]["note"] == 'quote " back \\ tab \t nl \n é 😀 \x01'

    # The snapshot's rows are the current rows' text, keys the same jsonb as the log's.
    snap = Stream(server.base, "/events?tables=every_kind&snapshot=true")
    try:
        rows = raw_until(snap, "synced")
    finally:
        snap.close()
    current = dict(sql.execute("SELECT t.id, to_jsonb(t)::text FROM every_kind t").fetchall())
    keys = dict(sql.execute(
        "SELECT (pk->>'id')::int, pk::text FROM pgtide.sync_log WHERE table_name = 'every_kind'"
    ).fetchall())  # fmt: skip
    assert sorted(json.loads(r)["pk"]["id"] for r in rows) == sorted(current) == [1, 2]
    for r in rows:
        key = json.loads(r)["pk"]["id"]
        assert f'"op":"SNAPSHOT","pk":{keys[key]},"row":{current[key]},"old":null,' in r


def raw_until(stream: Stream, event: str) -> list[str]:
    """The `data:` text of the change events before the named control event."""
    out: list[str] = []
    while (ev := stream.next()) is not None and ev.event != event:
        if ev.event == "message":
            out.append(ev.data)
    assert ev is not None, f"stream ended before {event!r}"
    return out


def test_a_row_leaving_a_filter_is_the_shared_text_marked_left(
    server: Server, sql: psycopg.Connection[Any]
) -> None:
    """Row 2 leaves `branch_id=eq.2222…` when its branch changes: that subscriber's event is
    everyone's bytes plus `"left":true`, the row images untouched."""
    everyone = Stream(server.base, "/events?tables=every_kind&since=now")
    nulls = Stream(
        server.base,
        "/events?tables=every_kind&since=now&branch_id=eq.22222222-2222-2222-2222-222222222222",
    )
    try:
        everyone.until("synced")
        nulls.until("synced")
        sql.execute(ROWS.encode())
        shared = datas(everyone, CHANGES)
        mine = datas(nulls, 2)  # row 2 inserted, row 2 leaving
    finally:
        everyone.close()
        nulls.close()
    left = [d for d in mine if json.loads(d).get("left")]
    assert len(left) == 1
    seq = json.loads(left[0])["seq"]
    (same,) = [d for d in shared if json.loads(d)["seq"] == seq]
    assert left[0] == same[:-1] + ',"left":true}'
