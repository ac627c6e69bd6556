"""The event framing, byte for byte: what every SSE client parses. No database."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cdc.events import encode_change, encode_control, encode_retry, encode_snapshot_row
from cdc.reader import Change

AT = datetime(2026, 12, 1, 10, 30, 0, 123456, tzinfo=UTC)


def change(**overrides: object) -> Change:
    fields: dict[str, object] = dict(
        seq=42, id=7, txid="1234", at=AT, schema_name="public", table_name="orders",
        op="UPDATE", pk_json='{"id": "a"}', row_json='{"id": "a", "note": "é", "total": 9.50}',
        old_json='{"id": "a", "note": "é", "total": 9}', changed=["total"], actor="alice",
        origin="branch-1", mutation_id=None, db_role="app",
    )  # fmt: skip
    fields.update(overrides)
    return Change(**fields)  # type: ignore[arg-type]


def test_a_change_is_a_default_event_with_its_cursor_as_id() -> None:
    assert encode_change(change()) == (
        b'id: 42\ndata: {"cursor":"42","seq":42,"txid":"1234","id":7,'
        b'"at":"2026-12-01T10:30:00.123456+00:00","schema":"public","table":"orders",'
        b'"op":"UPDATE","pk":{"id": "a"},"row":{"id": "a", "note": "\xc3\xa9", "total": 9.50},'
        b'"old":{"id": "a", "note": "\xc3\xa9", "total": 9},"changed":["total"],"actor":"alice",'
        b'"origin":"branch-1","mutation_id":null}\n\n'
    )


def test_row_images_are_decoded_only_when_read() -> None:
    c = change()
    assert c._decoded is None  # framing never decodes
    encode_change(c)
    assert c._decoded is None
    assert c.new_row == {"id": "a", "note": "é", "total": 9.5}
    assert c.new_row["total"].text == "9.50"  # type: ignore[index]  # the exact text is kept
    assert c.old_row is not None and c.pk == {"id": "a"}


def test_escapes_in_names_and_actors_are_json() -> None:
    data = encode_change(change(table_name='we"ird\n', actor="a\\b", mutation_id="m\x01"))
    body = data.split(b"data: ", 1)[1]
    got = json.loads(body)
    assert (got["table"], got["actor"], got["mutation_id"]) == ('we"ird\n', "a\\b", "m\x01")


def test_a_change_below_a_snapshot_has_no_id() -> None:
    assert encode_change(change(), with_id=False).startswith(b'data: {"cursor":"42"')


def test_snapshot_rows_and_control_events() -> None:
    assert encode_snapshot_row("public", "t", '{"id": 1}', '{"id": 1}') == (
        b'data: {"cursor":null,"seq":null,"txid":null,"id":null,"at":null,"schema":"public",'
        b'"table":"t","op":"SNAPSHOT","pk":{"id": 1},"row":{"id": 1},"old":null,"changed":null,'
        b'"actor":null,"origin":null,"mutation_id":null}\n\n'
    )
    assert encode_control("synced", {"cursor": "5"}, 5) == (
        b'id: 5\nevent: synced\ndata: {"cursor":"5"}\n\n'
    )
    assert encode_control("reset", {"earliest": "9"}) == b'event: reset\ndata: {"earliest":"9"}\n\n'
    assert encode_retry(1000) == b"retry: 1000\n\n"
