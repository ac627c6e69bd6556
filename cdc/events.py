"""SSE framing of changes and control events, byte for byte. Pure.

A change is a default-type event (no `event:` line, so `EventSource.onmessage`
sees it) whose `id:` is the cursor. Control events are named (`synced`,
`reset`, `error`). Each change is encoded once, whatever the number of subscribers.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from cdc.jsontext import dumps
from cdc.reader import Change

RETRY_MS = 1000


def change_payload(c: Change) -> dict[str, Any]:
    """The JSON object of a change event (field names fixed by docs/design.md).

    `left` is present (true) only on an UPDATE that takes the row out of the
    subscriber's column filters, so every other event keeps its shared bytes.
    """
    payload = {
        "cursor": str(c.seq),
        "seq": c.seq,
        "txid": c.txid,
        "id": c.id,
        "at": c.at.isoformat(),  # what _default would do, without a Python callback
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
    data = dumps(change_payload(c))
    return f"{head}data: {data}\n\n".encode()


def encode_body(c: Change) -> bytes:
    """The event's JSON alone: what the relay publishes, the `data:` of `encode_change`."""
    return dumps(change_payload(c)).encode()


def encode_snapshot_row(schema: str, table: str, pk: dict[str, Any], row: dict[str, Any]) -> bytes:
    """A SNAPSHOT event: a current row, without an `id:` (it is not a position in the log)."""
    payload = {
        "cursor": None, "seq": None, "txid": None, "id": None, "at": None,
        "schema": schema, "table": table, "op": "SNAPSHOT", "pk": pk, "row": row,
        "old": None, "changed": None, "actor": None, "origin": None, "mutation_id": None,
    }  # fmt: skip
    return f"data: {dumps(payload)}\n\n".encode()


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
