"""The fan-out baseline: a bare asyncio server that streams pre-encoded SSE events.

`python -m bench.rawfanout PORT` accepts `GET /...` connections and answers them
with a chunked `text/event-stream` (a `synced` event first, like pgtide). A
request to `/go?events=N&batch=B&size=S` makes it send N events of about S
bytes, B per chunk, to every open stream, waiting for each batch to drain
(asyncio flow control), and answers with the time that took. No framework,
no database: the ceiling of Python fan-out on this machine.
"""

from __future__ import annotations

import asyncio
import sys
import time
from urllib.parse import parse_qs, urlsplit

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-store\r\n\r\n"
)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(seq: int, size: int) -> bytes:
    head = b'id: %d\ndata: {"cursor":"%d","seq":%d,"row":"' % (seq, seq, seq)
    pad = max(0, size - len(head) - 5)
    return head + b"x" * pad + b'"}\n\n'


class RawServer:
    def __init__(self) -> None:
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        target = request.split(b" ", 2)[1].decode()
        url = urlsplit(target)
        if url.path == "/go":
            q = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
            took = await self.go(q.get("events", 1000), q.get("batch", 100), q.get("size", 400))
            body = f"{took:.6f}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()
            return
        writer.write(HEAD + _chunk(b"retry: 1000\n\n") +
                     _chunk(b'id: 0\nevent: synced\ndata: {"cursor":"0"}\n\n'))  # fmt: skip
        self.writers.add(writer)
        try:
            await reader.read()  # until the client goes away
        except ConnectionError:
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def go(self, events: int, batch: int, size: int) -> float:
        t0 = time.monotonic()
        seq = 0
        while seq < events:
            n = min(batch, events - seq)
            data = _chunk(b"".join(_event(seq + 1 + k, size) for k in range(n)))
            seq += n
            writers = list(self.writers)
            for w in writers:
                w.write(data)
            await asyncio.gather(*(w.drain() for w in writers), return_exceptions=True)
        return time.monotonic() - t0


async def main(port: int) -> None:
    srv = RawServer()
    server = await asyncio.start_server(srv.handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    from bench.common import raise_nofile

    raise_nofile()
    asyncio.run(main(int(sys.argv[1])))
