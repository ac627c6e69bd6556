"""await_txid: wait until a change of one's own transaction comes back on a subscription.

Write responses carry the write's `txid`; every subscription of a client
notes the txids it sees here. The last 5,000 are remembered, so a change that
arrives before its write's response still counts. Threads and event loops
may wait on the same watch.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict

from pgtide_client.errors import TxidTimeout

KEPT = 5000


class TxidWatch:
    """The txids seen by a client's subscriptions, and who waits for which."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._futures: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}

    def note(self, txid: str) -> None:
        """A change of `txid` arrived."""
        with self._lock:
            if txid in self._seen:
                return
            self._seen[txid] = None
            if len(self._seen) > self._kept:
                self._seen.popitem(last=False)
            waiting = self._futures.pop(txid, [])
            self._arrived.notify_all()
        for loop, fut in waiting:
            loop.call_soon_threadsafe(_resolve, fut)

    def seen(self, txid: str) -> bool:
        with self._lock:
            return str(txid) in self._seen

    def wait(self, txid: str, timeout: float | None = None) -> None:
        """Block until a change of `txid` arrived; TxidTimeout after `timeout` seconds."""
        txid = str(txid)
        with self._lock:
            if not self._arrived.wait_for(lambda: txid in self._seen, timeout):
                raise TxidTimeout(f"txid {txid} did not arrive within {timeout} s")

    async def await_(self, txid: str, timeout: float | None = None) -> None:
        """Wait until a change of `txid` arrived; TxidTimeout after `timeout` seconds."""
        txid = str(txid)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if txid in self._seen:
                return
            self._futures.setdefault(txid, []).append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TxidTimeout(f"txid {txid} did not arrive within {timeout} s") from None
        finally:
            with self._lock:
                left = [(lp, f) for lp, f in self._futures.get(txid, []) if f is not fut]
                if left:
                    self._futures[txid] = left
                else:
                    self._futures.pop(txid, None)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
