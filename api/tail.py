"""`pgtide tail`: live changes in the terminal, with the stream's own filters.

It runs the same machinery as a server process (a listener that also
sequences if no other process does, the hub, the stream's catch-up), so what
it prints is exactly what a subscriber with the same filters receives. With
`--url` it is such a subscriber instead: it follows a remote server's
`GET /events` through pgtide_client, which resumes by cursor after a
disconnect, so nothing is printed twice or missed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.text import Text

from cdc.catalog import Catalog
from cdc.filters import build_filter, parse_list
from cdc.hub import Hub
from cdc.listener import Listener
from cdc.settings import Settings
from cdc.stream import events, prepare
from pgtide_client import Change, Reconnecting, Reset, StreamError, Synced, asubscribe

OP_STYLES = {
    "INSERT": "green",
    "UPDATE": "yellow",
    "DELETE": "red",
    "TRUNCATE": "bold red",
    "MESSAGE": "cyan",
    "SNAPSHOT": "blue",
}


def sse_data(chunk: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, JSON data) of every event in a chunk of our own SSE framing."""
    out: list[tuple[str | None, dict[str, Any]]] = []
    for block in chunk.decode().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data is not None:
            out.append((name, json.loads(data)))
    return out


def render(event: dict[str, Any]) -> Text:
    """One line for a change: seq, time, op, table, key, changed columns, who."""
    op = event["op"]
    text = Text()
    text.append(f"{event['seq'] or '-':>8} ", style="dim")
    at = event.get("at") or ""
    text.append(f"{at[11:23]:<12} ", style="dim")
    text.append(f"{op:<8} ", style=OP_STYLES.get(op, ""))
    text.append(f"{event['table']} ", style="bold")
    if event.get("pk"):
        text.append(json.dumps(event["pk"], separators=(",", ":")) + " ")
    if event.get("changed"):
        text.append("[" + ", ".join(event["changed"]) + "] ", style="magenta")
    who = [v for v in (event.get("actor"), event.get("origin")) if v]
    if who:
        text.append("by " + " @ ".join(who), style="italic")
    return text


async def tail(
    url: str,
    settings: Settings,
    *,
    tables: str | None,
    ops: str | None,
    topics: str | None,
    since: str | None,
    snapshot: bool,
    where: list[tuple[str, str]],
    emit: Callable[[str | None, dict[str, Any]], None],
) -> None:
    """Stream matching changes to `emit` until cancelled."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    async with pool:
        # Check the request first: a bad filter is one line, before anything starts.
        catalog = await Catalog(pool).get(parse_list(tables, "tables") if tables else ())
        flt = build_filter(catalog, tables=tables, ops=ops, topics=topics, columns=where)
        plan = await prepare(pool, catalog, flt, since=since, last_event_id=None, snapshot=snapshot)
        hub = Hub()
        listener = Listener(url, hub, settings)
        task = asyncio.create_task(listener.run())
        try:
            while not listener.ready:
                await asyncio.wait_for(listener.connected.wait(), 30)
            async for chunk in events(hub, pool, plan):
                for name, data in sse_data(chunk):
                    emit(name, data)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def tail_remote(
    url: str,
    token: str | None,
    *,
    tables: str | None,
    ops: str | None,
    topics: str | None,
    since: str | None,
    snapshot: bool,
    where: list[tuple[str, str]],
    emit: Callable[[str | None, dict[str, Any]], None],
    note: Console,
) -> None:
    """Print a remote server's matching changes to `emit` until cancelled (pgtide_client)."""
    async for ev in asubscribe(
        url, token, tables=tables, ops=ops, topics=topics, filters=dict(where), since=since,
        snapshot=snapshot,
    ):  # fmt: skip
        if isinstance(ev, Change):
            emit(None, ev.data)
        elif isinstance(ev, Synced):
            emit("synced", {"cursor": ev.cursor})
        elif isinstance(ev, Reset):
            emit("reset", ev.data)
        elif isinstance(ev, StreamError):
            emit("error", ev.problem)
            note.print(Text(f"-- stream error {ev.code}: {ev.detail} --", style="bold red"))
        elif isinstance(ev, Reconnecting):
            note.print(Text(f"-- {ev.reason}; reconnecting in {ev.delay:.1f} s --", style="dim"))


def printer(console: Console, as_json: bool) -> Callable[[str | None, dict[str, Any]], None]:
    """An `emit` that prints rich lines (or JSON lines) to `console`."""

    def emit(name: str | None, data: dict[str, Any]) -> None:
        if as_json:
            console.print_json(json.dumps({"event": name or "change", **data}), indent=None)
        elif name == "synced":
            console.print(Text(f"-- live from cursor {data['cursor']} --", style="dim"))
        elif name == "reset":
            console.print(Text(f"-- reset: {data['reason']} --", style="bold red"))
        elif name is None:
            console.print(render(data))

    return emit
