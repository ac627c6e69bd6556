"""The one reconnect backoff: doubling from its base, capped, jittered by ±10 %, reset."""

from __future__ import annotations

from cdc.backoff import Backoff


def test_backoff_doubles_to_its_cap_with_jitter_and_resets() -> None:
    b = Backoff(base=1.0, cap=8.0)
    delays = [b.next() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal * 0.9 <= delay <= nominal * 1.1
    b.reset()
    assert 0.9 <= b.next() <= 1.1
