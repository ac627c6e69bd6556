"""A TCP proxy between a client and a real server, which a test can cut or hold.

Faults at the byte level (psycopg's tests/fix_proxy.py does the same for
PostgreSQL): `cut_at(marker, nth)` closes the next connection right after the
n-th occurrence of `marker` in what the server sends, so a client sees an event
cut in half; `hold()` swallows what the server sends (the client waits for an
answer that never comes) and sets `answered` when the server did answer;
`blackhole()` stops forwarding on the open connections, in both directions, with
their sockets left open (a dead connection that never closes; new ones work);
`stall()` stops reading what the server sends (its socket buffers fill, as
behind a consumer that reads nothing) until `forward()`; `reject()` closes new
connections at once.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.live import free_port


class Proxy:
    """Listens on a free port and forwards each connection to `127.0.0.1:target`."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.mode = "forward"
        self.answered = threading.Event()  # set when the server sent bytes while held
        self._flowing = threading.Event()  # cleared by stall(): upstream is not read
        self._flowing.set()
        self.connections = 0
        self._cut: tuple[bytes, int] | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._dead: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_at(self, marker: bytes, nth: int) -> None:
        """Cut the connection that next receives bytes from the server, right after the
        n-th `marker` in them (counted from now)."""
        with self._lock:
            self._cut = (marker, nth)

    def hold(self) -> None:
        self.answered.clear()
        self.mode = "hold"

    def blackhole(self) -> None:
        with self._lock:
            self._dead = set(self._sockets)

    def reject(self) -> None:
        self.mode = "reject"

    def stall(self) -> None:
        self._flowing.clear()

    def forward(self) -> None:
        self.mode = "forward"
        self._flowing.set()

    def drop(self) -> None:
        """Close every open connection (new ones are accepted as the mode says)."""
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reject":
                down.close()
                continue
            up = socket.socket()
            # A small receive buffer: while stalled, the server's own send buffer fills.
            up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            try:
                up.connect(("127.0.0.1", self.target))
            except OSError:
                up.close()
                down.close()
                continue
            with self._lock:
                self._sockets += [down, up]
                self.connections += 1
            threading.Thread(target=self._pipe, args=(down, up, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, True), daemon=True).start()

    def _take_cut(self) -> tuple[bytes, int] | None:
        with self._lock:
            cut, self._cut = self._cut, None
        return cut

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        seen = b""
        cut: tuple[bytes, int] | None = None
        try:
            while (not upstream or self._flowing.wait()) and (data := src.recv(65536)):
                if upstream and cut is None and self._cut is not None:
                    cut, seen = self._take_cut(), b""  # counted from the bytes after arming
                if src in self._dead:
                    continue
                if upstream and self.mode == "hold":
                    self.answered.set()
                    continue
                if cut is not None:
                    marker, nth = cut
                    seen += data
                    at = -1
                    for _ in range(nth):
                        at = seen.find(marker, at + 1)
                        if at < 0:
                            break
                    if at >= 0:
                        end = at + len(marker) - (len(seen) - len(data))
                        dst.sendall(data[: max(end, 0)])
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
