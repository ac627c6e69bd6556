"""Durations (`30d`, `2h30m`) and instants (ISO 8601, or a duration ago). Pure.

Used by the audit filters (`--since 2h`), retention (`--keep 30d`) and the
`PGTIDE_RETENTION_KEEP` setting. An ISO instant without an offset is UTC, as in
the stream's column filters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"([0-9]{1,9})([smhdw])")
_DURATION = re.compile(r"(?:[0-9]{1,9}[smhdw])+")


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `2h`, `7d`, `1w`, or a concatenation like `1d12h`; ValueError otherwise."""
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise ValueError(
            f"{text!r} is not a duration: use a number and a unit s, m, h, d or w (30d, 2h30m)"
        )
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(compact))
    return timedelta(seconds=seconds)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC. ValueError otherwise."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 timestamp (e.g. 2024-05-01T12:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """A duration ago (`2h`: two hours before `now`) or an ISO instant."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_instant(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (2h, 30m, 7d) nor an ISO 8601 timestamp"
        ) from None
