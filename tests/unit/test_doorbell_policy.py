"""The busy sequencer's poll policy: no steady commit rate leaves a change waiting on a
timer much longer than the gap to the next commit. No database."""

from __future__ import annotations

import pytest

from cdc.sequencer import CommitRate, busy_poll
from cdc.settings import Settings

SETTINGS = Settings(poll_min_ms=1.0, poll_max_ms=16.0, poll_above_per_s=250.0)


@pytest.mark.parametrize("rate", [10, 50, 100, 200, 249])
def test_below_the_threshold_an_empty_pass_sleeps_on_the_doorbell(rate: float) -> None:
    # Asleep, a commit NOTIFYs and wakes the sequencer at once: no timer at all.
    assert busy_poll(0.001, rate, SETTINGS) is None


@pytest.mark.parametrize("rate", [250, 500, 1000, 5000])
def test_above_it_the_poll_never_exceeds_the_mean_gap_between_commits(rate: float) -> None:
    interval = 0.001
    for _ in range(10):  # empty passes in a row
        polled = busy_poll(interval, rate, SETTINGS)
        assert polled is not None
        assert polled <= max(SETTINGS.poll_min_ms / 1000, 1 / rate) + 1e-12
        interval = polled


def test_the_rate_is_the_transactions_of_the_last_second() -> None:
    rate = CommitRate()
    for i in range(100):
        rate.add(i * 0.01, 2)  # 200 transactions over one second
    assert rate.per_s(0.99) == pytest.approx(200)
    assert rate.per_s(5.0) == 0  # quiet since: the window emptied
