"""pgtide's error tree.

    PgtideError
    ├── ConfigError          bad settings or environment
    ├── DatabaseUnavailable  cannot reach PostgreSQL
    ├── CursorError          a malformed or out-of-range cursor
    ├── FilterError          a bad table, column, operator or value in a filter
    ├── StreamFailure        one stream could not match or encode a change (that stream ends)
    └── TrackingError        a table cannot be tracked or untracked

Each class's docstring is its default message. The CLI prints `str(err)` on one
line; the HTTP layer maps each class to a status and a stable code.
"""

from __future__ import annotations


class PgtideError(Exception):
    """pgtide failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(PgtideError):
    """The configuration is invalid."""


class DatabaseUnavailable(PgtideError):
    """The database cannot be reached."""


class CursorError(PgtideError, ValueError):
    """The cursor is malformed: it must be a non-negative decimal integer."""


class TrackingError(PgtideError):
    """The table cannot be tracked."""


class FilterError(PgtideError, ValueError):
    """The stream or list filter is invalid."""


class StreamFailure(PgtideError):
    """This stream could not apply its filters to a change; it ends, the feed goes on.

    `code` is stable for machines (docs/stream.md, "The `error` event"); `seq` is
    the change it failed on, if any.
    """

    def __init__(self, code: str, detail: str, seq: int | None = None, status: int = 500) -> None:
        super().__init__(detail)
        self.code = code
        self.seq = seq
        self.status = status
