"""SSE framing of changes and control events, byte for byte. Pure.

A change is a default-type event (no `event:` line, so `EventSource.onmessage`
sees it) whose `id:` is the cursor. Control events are named (`synced`,
`reset`, `error`). Each change is encoded once, whatever the number of subscribers.
"""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus
from json.encoder import encode_basestring
from typing import Any

from cdc.jsontext import dumps
from cdc.reader import Change

RETRY_MS = 1000


def change_payload(c: Change) -> dict[str, Any]:
    """The JSON object of a change event, its images decoded (the audit's records).

    Field names fixed by docs/design.md. `left` is present (true) only on an UPDATE
    that takes the row out of the subscriber's column filters.
    """
    payload = {
        "cursor": str(c.seq),
        "seq": c.seq,
        "txid": c.txid,
        "id": c.id,
        "at": c.at.isoformat(),
        "schema": c.schema_name,
        "table": c.table_name,
        "op": c.op,
        "pk": c.pk,
        "row": c.new_row,
        "old": c.old_row,
        "changed": c.changed,
        "actor": c.actor,
        "origin": c.origin,
        "mutation_id": c.mutation_id,
    }
    if c.left:
        payload["left"] = True
    return payload


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


# The last `at` formatted: changes of one transaction share it (its start time), and
# datetime.isoformat is the dearest part of an event's JSON (2.4 µs of 5.2).
_last_at: tuple[datetime | None, str] = (None, "")


def _iso(at: datetime) -> str:
    global _last_at
    last, text = _last_at
    # Equal instants in other zones print differently: the zone must match as well.
    if last is None or at != last or at.tzinfo != last.tzinfo:
        text = at.isoformat()
        _last_at = (at, text)
    return text


# `"schema":…,"table":…,"op":…` per (schema, table, op): a few hundred at most.
_WHERE: dict[tuple[str, str, str], str] = {}


def _where(schema: str, table: str, op: str) -> str:
    key = (schema, table, op)
    text = _WHERE.get(key)
    if text is None:
        if len(_WHERE) > 10_000:  # topics of MESSAGEs are the caller's: keep it bounded
            _WHERE.clear()
        text = _WHERE[key] = f'"schema":{_text(schema)},"table":{_text(table)},"op":{_text(op)}'
    return text


def change_json(c: Change) -> str:
    """The event's JSON: compact fields in a fixed order, the row images as PostgreSQL printed
    them (`pk_json`, `row_json`, `old_json`), so every path that frames a change (live,
    catch-up, the relay) sends the same bytes without decoding a row.
    """
    changed = "null" if c.changed is None else dumps(c.changed)
    left = ',"left":true' if c.left else ""
    return (
        f'{{"cursor":"{c.seq}","seq":{c.seq},"txid":{_text(c.txid)},"id":{c.id},'
        f'"at":"{_iso(c.at)}",{_where(c.schema_name, c.table_name, c.op)},'
        f'"pk":{c.pk_json or "null"},'
        f'"row":{c.row_json or "null"},"old":{c.old_json or "null"},"changed":{changed},'
        f'"actor":{_text(c.actor)},"origin":{_text(c.origin)},'
        f'"mutation_id":{_text(c.mutation_id)}{left}}}'
    )


def encode_change(c: Change, *, with_id: bool = True) -> bytes:
    """`id: <seq>` and `data: <json>`, ending with a blank line.

    A change received from the broker (cdc/broker.py) keeps the JSON it was
    published as (`wire`), the bytes this function made for it in the relay:
    it is framed as it is, never encoded again.
    """
    wire: bytes | None = getattr(c, "wire", None)
    head = f"id: {c.seq}\n" if with_id else ""
    if wire is not None:
        return b"".join((head.encode(), b"data: ", wire, b"\n\n"))
    return f"{head}data: {change_json(c)}\n\n".encode()


def encode_body(c: Change) -> bytes:
    """The event's JSON alone: what the relay publishes, the `data:` of `encode_change`."""
    return change_json(c).encode()


def encode_snapshot_row(schema: str, table: str, pk_json: str, row_json: str) -> bytes:
    """A SNAPSHOT event: a current row, without an `id:` (it is not a position in the log).

    The key and row are PostgreSQL's text of their jsonb, as in a change event.
    """
    return (
        f'data: {{"cursor":null,"seq":null,"txid":null,"id":null,"at":null,'
        f'"schema":{_text(schema)},"table":{_text(table)},"op":"SNAPSHOT","pk":{pk_json},'
        f'"row":{row_json},"old":null,"changed":null,"actor":null,"origin":null,'
        f'"mutation_id":null}}\n\n'
    ).encode()


def encode_control(event: str, data: dict[str, Any], cursor: int | None = None) -> bytes:
    """A named control event; with a cursor it also moves the client's Last-Event-ID."""
    head = f"id: {cursor}\n" if cursor is not None else ""
    return f"{head}event: {event}\ndata: {dumps(data)}\n\n".encode()


def encode_retry(ms: int = RETRY_MS) -> bytes:
    """The reconnection delay the client should use."""
    return f"retry: {ms}\n\n".encode()


def encode_error(status: int, code: str, detail: str, **members: Any) -> bytes:
    """The `error` event: a problem+json object (RFC 9457), after which the stream closes."""
    problem = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **members,
    }
    return encode_control("error", problem)
