"""The NATS JetStream edge: connecting, the stream, and changes as messages.

The relay (cdc/relay.py) publishes every sequenced change as one message of one
stream; gateways (cdc/gateway.py) read it back. A message is:

- subject: cdc/subjects.py (`<stream>.table.<schema>.<table>`, `<stream>.topic.<topic>`)
- body: the event's JSON, byte for byte the `data:` of the SSE event
- `Nats-Msg-Id`: the change's seq (the cursor), as a decimal string

Stream sequences and seqs are aligned by a fixed offset: the relay chains every
publish on the stream's last sequence (`Nats-Expected-Last-Sequence`), so the
message of seq `s` is at stream sequence `s - offset`, with no gap, for the
life of the stream. The offset is fixed when the relay first publishes to a
new stream and written in the stream's description (`pgtide seq = stream
sequence + N`), so it is known even when every message has expired.
docs/scale-out.md says why the chain uses the sequence, not the message id.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from cdc.errors import PgtideError
from cdc.reader import Change
from cdc.subjects import all_subjects
from cdc.values import DECODER as _DECODER
from cdc.values import exact_loads

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_STREAM = "Nats-Expected-Stream"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a broken chain

_OFFSET = re.compile(r"pgtide seq = stream sequence \+ ([0-9]+)")


class BrokerError(PgtideError):
    """NATS or its stream refused or failed; the relay or gateway starts over from the stream."""


class StreamMismatch(BrokerError):
    """The stream does not hold what pgtide published (another database's, or edited by hand)."""


def describe(offset: int) -> str:
    """The stream's description, which records the offset."""
    return f"pgtide change stream: pgtide seq = stream sequence + {offset}"


def offset_of(description: str | None) -> int | None:
    """The offset a description records (None: none yet)."""
    found = _OFFSET.search(description or "")
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class StreamPosition:
    """Where the stream is, in pgtide seqs: it holds the changes in (first - 1, last]."""

    first: int  # seq of its oldest message (last + 1 when it holds none)
    last: int  # seq of its newest message ever (kept when messages expire)
    offset: int
    messages: int


@dataclass(slots=True)
class BrokerChange(Change):
    """A change read from the stream; `wire` is its JSON as published (cdc/events.py)."""

    wire: bytes | None = field(default=None, init=False, compare=False, repr=False)


_IMAGES = (',"pk":', ',"row":', ',"old":')


def decode_change(body: bytes) -> BrokerChange:
    """The change a message body carries; its JSON is kept to be sent byte for byte.

    The row images are cut out of the body as published (PostgreSQL's text of
    them, cdc/events.py), so a view that rewrites the change (a pin, `left`)
    frames the same bytes as a server reading the log. Each part is parsed once.
    ValueError/KeyError/TypeError for a body that is not a pgtide event.
    """
    text = body.decode("utf-8")
    # The fields before `pk` are compact JSON whose strings escape every quote, so the
    # first `,"pk":` is the key itself.
    start = text.index(_IMAGES[0])
    head = exact_loads(text[:start] + "}")
    images: list[str] = []
    decoded: dict[str, Any] = {}
    for key, marker in zip(("pk", "row", "old"), _IMAGES, strict=True):
        if not text.startswith(marker, start):
            raise ValueError(f"expected {marker} at {start}")
        begin = start + len(marker)
        decoded[key], start = _DECODER.raw_decode(text, begin)
        images.append(text[begin:start])
    tail = exact_loads("{" + text[start + 1 :])
    pk, row, old = (None if i == "null" else i for i in images)
    c = BrokerChange(
        int(head["seq"]), int(head["id"]), str(head["txid"]), datetime.fromisoformat(head["at"]),
        head["schema"], head["table"], head["op"], pk, row, old,
        tail["changed"], tail["actor"], tail["origin"], tail["mutation_id"], "",
    )  # fmt: skip
    c.wire = body
    c._decoded = {k: v for k, v in decoded.items() if v is not None}
    return c


@dataclass
class Connection:
    """A NATS connection that does not reconnect by itself: whoever holds it starts over."""

    nc: NATS
    closed: asyncio.Event

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=5)

    async def close(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.close()
            except Exception as exc:  # closing a broken connection may fail; it is gone
                log.debug("broker: close: %s", exc)


async def connect(url: str, name: str) -> Connection:
    """Connect once (no automatic reconnect: the caller resumes from the stream itself)."""
    closed = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        log.debug("broker: %s", exc)

    async def on_closed() -> None:
        closed.set()

    async def on_disconnected() -> None:
        closed.set()

    try:
        nc = await nats.connect(
            url, name=name, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0,
            error_cb=on_error, closed_cb=on_closed, disconnected_cb=on_disconnected,
        )  # fmt: skip
    except Exception as exc:  # nats-py raises several kinds (OSError, NoServersError, ...)
        why = describe_error(exc)
        raise BrokerError(f"cannot connect to NATS at {redact(url)}: {why}") from exc
    return Connection(nc, closed)


def redact(url: str) -> str:
    """A NATS URL without credentials."""
    return re.sub(r"//[^@/]*@", "//", url)


def describe_error(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


async def position(js: JetStreamContext, stream: str) -> StreamPosition | None:
    """The stream's position, or None if it does not exist or has no offset yet."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return None
    offset = offset_of(info.config.description)
    if offset is None:
        return None
    st = info.state
    return StreamPosition(st.first_seq + offset, st.last_seq + offset, offset, st.messages)


async def ensure_stream(js: JetStreamContext, stream: str, max_age: timedelta) -> Any:
    """The stream's info, creating the stream (or fixing its retention) as needed."""
    subject = all_subjects(stream)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        config = js_api.StreamConfig(
            name=stream, subjects=[subject], storage=js_api.StorageType.FILE,
            retention=js_api.RetentionPolicy.LIMITS, discard=js_api.DiscardPolicy.OLD,
            max_age=max_age.total_seconds(), description=None,
        )  # fmt: skip
        log.info("relay: creating stream %s (subjects %s)", stream, subject)
        return await js.add_stream(config)
    if subject not in (info.config.subjects or []):
        raise StreamMismatch(f"stream {stream} exists without subject {subject}: not pgtide's")
    if info.config.max_age != max_age.total_seconds():
        info.config.max_age = max_age.total_seconds()
        info = await js.update_stream(info.config)
    return info


async def set_offset(js: JetStreamContext, stream: str, offset: int) -> None:
    """Record the offset in the stream's description."""
    info = await js.stream_info(stream)
    info.config.description = describe(offset)
    await js.update_stream(info.config)
