"""Compact JSON text: the one spelling of every JSON pgtide writes, in events (framed by
cdc/events.py), API bodies and audit records alike.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# One encoder for every event: json.dumps with options builds a new JSONEncoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_default)


def dumps(obj: Any) -> str:
    """Compact JSON, datetimes in ISO 8601."""
    return _ENCODER.encode(obj)
