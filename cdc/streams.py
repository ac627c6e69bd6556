"""Open streams, counted per owner (a token id) from admission until the response ends.

The per-token cap and the token watcher count these, not the hub's subscribers:
a stream is counted while it reads its snapshot or catches up, and after the hub
dropped its subscriber for falling behind. `admit` counts and registers in one
step, with no `await` in between, so concurrent opens cannot all pass the cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdc.hub import Subscriber


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted stream: who owns it, and whether it was told to stop.

    No task or timer per stream waits on it: stopping wakes the live subscription and
    calls `on_stop` (the HTTP layer's cut of a response whose client does not read).
    """

    owner: Any
    stopped: bool = False
    sub: Subscriber | None = None  # its live subscription, once it joined the hub
    on_stop: Callable[[], None] | None = None

    def stop(self) -> None:
        """End the stream in whatever phase it is (snapshot, catch-up, live)."""
        if self.stopped:
            return
        self.stopped = True
        if self.sub is not None:
            self.sub.close()
        if self.on_stop is not None:
            self.on_stop()

    @property
    def is_stopped(self) -> bool:
        return self.stopped


class Streams:
    """The process's open streams."""

    def __init__(self) -> None:
        self._open: dict[Any, set[Ticket]] = {}

    def admit(self, owner: Any, cap: int | None) -> Ticket | None:
        """Register a stream for `owner`, or None when it already holds `cap` streams."""
        held = self._open.setdefault(owner, set())
        if owner is not None and cap is not None and len(held) >= cap:
            return None
        ticket = Ticket(owner)
        held.add(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The stream ended (idempotent)."""
        held = self._open.get(ticket.owner)
        if held is not None:
            held.discard(ticket)
            if not held:
                del self._open[ticket.owner]

    def count(self, owner: Any) -> int:
        """Open streams of `owner`."""
        return len(self._open.get(owner, ()))

    def owners(self) -> set[Any]:
        """Owners (token ids) holding open streams; None (no auth) left out."""
        return {o for o in self._open if o is not None}

    def stop(self, owners: set[Any]) -> int:
        """Stop every stream of these owners; how many were stopped."""
        n = 0
        for owner in owners:
            for ticket in list(self._open.get(owner, ())):
                ticket.stop()
                n += 1
        return n

    def stop_all(self) -> None:
        """Stop every stream (shutdown)."""
        for held in list(self._open.values()):
            for ticket in list(held):
                ticket.stop()

    def __len__(self) -> int:
        return sum(len(h) for h in self._open.values())
