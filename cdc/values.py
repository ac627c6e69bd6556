"""Column values read by kind and compared as PostgreSQL compares them. Pure.

One parser per idea: the stream's filters (cdc/filters.py), the list filters
(api/listing.py) and the sync-log's keys (cdc/logquery.py) read a value given
as text with `parse`, and the stream reads row images with `of_row`; both give
the same comparable key, so a filter value and a row value compare as in SQL.

    number   numeric and the other numbers: NaN equals NaN and is above every
             number, 'Infinity' and '-Infinity' are at the ends (PostgreSQL's order)
    time     timestamptz, timestamp, date: 'infinity'/'-infinity' at the ends, years
             past 9999 and BC kept (Python's datetime holds neither)
    clock    time and timetz (timetz by its UTC time, then its zone, as PostgreSQL)
    bool, uuid, text

A value PostgreSQL would refuse for the kind raises ValueError (the callers turn
it into FilterError, a 400). A few forms PostgreSQL accepts are refused on
purpose, so that a filter means the same on every server version and at every
moment: `1_000` and `0x10` (PostgreSQL 16+), time words like `now`, `today`,
and more than 6 fractional digits of a second (docs/stream.md).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, LiteralString

NUMBER, BOOL, TIME, CLOCK, TEXT, UUID, JSON = (
    "number", "bool", "time", "clock", "text", "uuid", "json",
)  # fmt: skip

# PostgreSQL's numeric limits: digits before the point, digits after it.
_MAX_WEIGHT_DIGITS, _MAX_SCALE = 131072, 16383
_SPACE = " \t\n\r\v\f"  # what PostgreSQL's input functions skip around a value (C isspace)
_NUMERIC = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_INFINITY = {"infinity": 1, "+infinity": 1, "inf": 1, "+inf": 1, "-infinity": -1, "-inf": -1}
_UUID = re.compile(r"(?:[0-9a-fA-F]{4}-?){7}[0-9a-fA-F]{4}", re.ASCII)
_CLOCK = r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?"
_ZONE = r"(Z|z|[+-][0-9]{2}(?::?[0-9]{2}(?::?[0-9]{2})?)?)"
_MOMENT = re.compile(
    rf"([0-9]{{4,}})-([0-9]{{2}})-([0-9]{{2}})(?:[Tt ]{_CLOCK}{_ZONE}?)?( BC)?", re.ASCII
)
_TIME_OF_DAY = re.compile(rf"{_CLOCK}{_ZONE}?", re.ASCII)
_DAY_US = 86_400_000_000
_MAX_ZONE_S = 15 * 3600 + 59 * 60 + 59

NumberKey = tuple[bool, Decimal | int]  # (is NaN, value): NaN sorts above everything
TimeKey = tuple[int, int]  # (-1 | 0 | 1 for -infinity | finite | infinity, µs since epoch UTC)
ClockKey = tuple[int, int]  # (µs of day in UTC, zone in seconds west): timetz's order


class Exact(float):
    """A JSON number from a row image, keeping its text: float for the wire, text for filters.

    json encodes it as a float (byte for byte as before); a filter reads `text`
    so `0.1000000000000000001` and `1e-999` compare exactly, not as doubles.
    """

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Exact:
        self = super().__new__(cls, text)
        self.text = text
        return self


# One decoder: json.loads with any option builds a new JSONDecoder per call, and this
# runs for every row image the server reads (profiled: 4 % of a server's CPU).
DECODER = json.JSONDecoder(parse_float=Exact)


def exact_loads(data: bytes | str) -> Any:
    """`json.loads` keeping every fractional number's text (psycopg's json loader)."""
    return DECODER.decode(data if isinstance(data, str) else bytes(data).decode("utf-8"))


_NAN: NumberKey = (True, 0)


def parse_number(text: str) -> NumberKey:
    """A numeric literal as PostgreSQL's numeric input reads it; ValueError if it refuses."""
    body = text.strip(_SPACE)
    low = body.lower()
    if low == "nan":
        return _NAN
    if low in _INFINITY:
        return (False, Decimal("Infinity") if _INFINITY[low] > 0 else Decimal("-Infinity"))
    if not _NUMERIC.fullmatch(body):
        raise ValueError(text)
    value = Decimal(body)
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    # A zero fits whatever its exponent says, as in PostgreSQL; other numbers must fit.
    if any(digits) and value.adjusted() + 1 > _MAX_WEIGHT_DIGITS:
        raise ValueError(text)
    if -exponent > _MAX_SCALE:  # PostgreSQL keeps the scale written, even of a zero
        raise ValueError(text)
    return (False, int(value) if exponent >= 0 and value.adjusted() < 18 else value)


def _number_of_row(value: Any) -> NumberKey:
    if type(value) is int:
        return (False, value)
    if isinstance(value, Exact):
        return parse_number(value.text)
    if isinstance(value, float):  # a loader without `exact_loads`: its shortest repr
        return parse_number(repr(value))
    if isinstance(value, str):  # to_jsonb writes NaN and ±Infinity as strings
        return parse_number(value)
    if isinstance(value, Decimal):
        return parse_number(str(value))
    raise ValueError(f"not a number: {value!r}")


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar (astronomical years)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


# timestamptz's range: 4714-11-24 BC 00:00 to 294276-12-31 23:59:59.999999 (UTC).
_MIN_US = _days_from_civil(-4713, 11, 24) * _DAY_US
_MAX_US = _days_from_civil(294277, 1, 1) * _DAY_US - 1


def _clock_us(hh: str, mm: str, ss: str | None, frac: str | None, text: str) -> int:
    hour, minute, second = int(hh), int(mm), int(ss or 0)
    micros = int((frac or "").ljust(6, "0"))
    # PostgreSQL takes 24:00:00 (the end of the day) and a leap second 60 (the next minute).
    if minute > 59 or second > 60 or hour > 24 or (hour == 24 and (minute or second or micros)):
        raise ValueError(text)
    return ((hour * 60 + minute) * 60 + second) * 1_000_000 + micros


def _zone_s(zone: str | None, text: str) -> int:
    """A UTC offset in seconds east (`Z`, `+05`, `+05:30`, `-0330`, `+05:30:15`)."""
    if zone is None or zone in ("Z", "z"):
        return 0
    digits = zone[1:].replace(":", "")
    parts = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
    hours, minutes, seconds = [*parts, 0, 0][:3]
    total = hours * 3600 + minutes * 60 + seconds
    if minutes > 59 or seconds > 59 or total > _MAX_ZONE_S:
        raise ValueError(text)
    return -total if zone[0] == "-" else total


def parse_time(text: str) -> TimeKey:
    """An ISO 8601 timestamp (or date) as timestamptz reads it; a value without zone is UTC.

    'infinity', '-infinity' and 'epoch' are PostgreSQL's special values; `BC` and
    years past 9999 are kept exactly. ValueError for anything else.
    """
    body = text.strip(_SPACE)
    low = body.lower()
    # Not '+infinity': PostgreSQL reads it only from 16 on, and a filter means the same
    # on every supported server.
    if low == "infinity":
        return (1, 0)
    if low == "-infinity":
        return (-1, 0)
    if low == "epoch":
        return (0, 0)
    m = _MOMENT.fullmatch(body)
    if m is None:
        raise ValueError(text)
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    if year == 0:
        raise ValueError(text)
    if m[9]:  # 1 BC is astronomical year 0
        year = 1 - year
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise ValueError(text)
    clock = _clock_us(m[4], m[5], m[6], m[7], text) if m[4] else 0
    micros = _days_from_civil(year, month, day) * _DAY_US + clock - _zone_s(m[8], text) * 1_000_000
    if not _MIN_US <= micros <= _MAX_US:
        raise ValueError(text)
    return (0, micros)


def time_text(key: TimeKey) -> str:
    """The canonical text of a time key, which PostgreSQL reads back as the same instant."""
    if key[0]:
        return "infinity" if key[0] > 0 else "-infinity"
    days, micros = divmod(key[1], _DAY_US)
    # civil_from_days (Howard Hinnant's algorithm), astronomical years.
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    seconds, fraction = divmod(micros, 1_000_000)
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"
    era_mark = "" if year > 0 else " BC"
    return f"{year if year > 0 else 1 - year:04d}-{month:02d}-{day:02d}T{clock}+00:00{era_mark}"


def parse_clock(text: str) -> ClockKey:
    """A time of day, with or without zone (`12:30`, `12:30:00.5+05:30`); 'allballs' is 00:00."""
    body = text.strip(_SPACE)
    if body.lower() == "allballs":
        return (0, 0)
    m = _TIME_OF_DAY.fullmatch(body)
    if m is None:
        raise ValueError(text)
    east = _zone_s(m[5], text)
    return (_clock_us(m[1], m[2], m[3], m[4], text) - east * 1_000_000, -east)


def parse_bool(text: str) -> bool:
    """`true` or `false` (any case); PostgreSQL's other spellings are refused to keep one."""
    low = text.strip(_SPACE).lower()
    if low not in ("true", "false"):
        raise ValueError(text)
    return low == "true"


def parse_uuid(text: str) -> str:
    """A uuid in PostgreSQL's input forms (hyphens after any 4 digits, braces), canonical."""
    body = text.strip(_SPACE)
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    if not _UUID.fullmatch(body):
        raise ValueError(text)
    h = body.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_text(text: str) -> str:
    """Text as given; NUL is refused, as PostgreSQL's text cannot hold it."""
    if "\x00" in text:
        raise ValueError("text must not contain NUL characters")
    return text


def parse(kind: str, text: str) -> Any:
    """A filter value as the column's kind: a key that compares as PostgreSQL compares.

    ValueError when PostgreSQL would refuse it for the kind (or pgtide refuses the form).
    """
    if "\x00" in text:  # no PostgreSQL type takes NUL in its text form
        raise ValueError("a value must not contain NUL characters")
    if kind == NUMBER:
        return parse_number(text)
    if kind == TIME:
        return parse_time(text)
    if kind == CLOCK:
        return parse_clock(text)
    if kind == BOOL:
        return parse_bool(text)
    if kind == UUID:
        return parse_uuid(text)
    return parse_text(text)


def of_row(kind: str, value: Any) -> Any:
    """A row image's JSON value as the same key `parse` gives (None stays None).

    ValueError for a value the kind cannot hold: the caller ends that one
    subscriber, never the feed.
    """
    if value is None:
        return None
    if kind == NUMBER:
        return _number_of_row(value)
    if kind == TIME:
        return parse_time(_as_str(value))
    if kind == CLOCK:
        return parse_clock(_as_str(value))
    if kind == UUID:
        return parse_uuid(_as_str(value))
    if kind == TEXT and not isinstance(value, str):
        # A user type whose JSON form is not a string (hstore, say): its JSON text.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def _as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"not a text value: {value!r}")
    return value


def to_param(kind: str, text: str) -> Any:
    """A filter value checked by `parse`, as a value to bind in SQL (cast to `cast_of`).

    Text goes to PostgreSQL as an untyped literal it reads as the column's type;
    a time is sent in canonical form (UTC when no zone was given).
    """
    key = parse(kind, text)
    if kind == NUMBER:
        if key[0]:
            return Decimal("NaN")
        return Decimal(key[1]) if isinstance(key[1], int) else key[1]
    if kind == TIME:
        return time_text(key)
    if kind == CLOCK:
        return text.strip(_SPACE)
    return key


def cast_of(kind: str) -> LiteralString | None:
    """The SQL type a bound parameter of this kind is cast to (None: its own type)."""
    return "timestamptz" if kind == TIME else None
