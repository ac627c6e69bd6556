"""Reconnecting: one jittered exponential backoff for every loop that follows the database
(the sequencer, the listener, the relay, the gateway's feed)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Jittered exponential backoff for reconnects (1 s ±10 %, doubling, capped)."""

    base: float = 1.0
    cap: float = 30.0
    _next: float = field(default=0.0, init=False)

    def reset(self) -> None:
        """Start again from `base`."""
        self._next = 0.0

    def next(self) -> float:
        """The next delay."""
        self._next = self.base if self._next == 0.0 else min(self._next * 2, self.cap)
        return self._next * random.uniform(0.9, 1.1)
