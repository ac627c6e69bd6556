"""`POST /api/<resource>` with `Content-Type: text/csv`: import many rows, all or nothing.

The body is spooled to a temporary file as it arrives (up to
`PGTIDE_IMPORT_MAX_BYTES`, else 413) and every record validated
(api/csvimport.py) before a database connection is taken, so a slow upload
never holds a connection or a transaction. Then one write transaction, through
the same helper as every other write (author, txid, Idempotency-Key), COPYs
the rows in (api/csvcopy.py). The answer is 201 `{"data": {"count": N}, "txid"}`.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Awaitable, Callable
from typing import IO, Any

import psycopg
from starlette.requests import Request
from starlette.responses import Response

from api import references
from api.csvcopy import copy_in, failed_line, with_line
from api.csvimport import SPOOL_MEMORY, prepare
from api.errors import ApiError
from api.identity import confine
from api.writes import Done

Work = Callable[[psycopg.AsyncConnection[Any]], Awaitable[Done]]
Write = Callable[..., Awaitable[Response]]  # api.resources._write(request, work, body=...)


def is_csv(content_type: str) -> bool:
    """Whether a request's Content-Type is `text/csv` (whatever its parameters)."""
    return content_type.split(";", 1)[0].strip().lower() == "text/csv"


def _check_charset(content_type: str) -> None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            raise ApiError(415, f"CSV is read as UTF-8 only, not {value.strip()}; "
                                "send it with Content-Type: text/csv; charset=utf-8")  # fmt: skip


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the CSV body is larger than {limit} bytes (PGTIDE_IMPORT_MAX_BYTES); "
                         "split it into several imports")  # fmt: skip


async def spool(request: Request, limit: int) -> tuple[IO[bytes], bytes]:
    """The body in a temporary file (rewound) and its SHA-256; 413 beyond `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 (returned)
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in request.stream():  # counted as it arrives: Content-Length may lie
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.write(chunk)
            digest.update(chunk)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out, digest.digest()


async def import_csv(request: Request, res: Any, pin: Any, write: Write) -> Response:
    """Validate the CSV body, then COPY every record in one write transaction."""
    content_type = request.headers.get("content-type", "")
    _check_charset(content_type)
    state: Any = request.state
    body, digest = await spool(request, state.settings.import_max_bytes)
    records: list[dict[str, Any]] = []
    try:

        def pinned(values: dict[str, Any]) -> None:
            confine(res, values, pin)
            records.append(values)  # its references are checked in the write (references.py)

        # Off the event loop: a large file takes seconds to validate.
        prepared = await asyncio.to_thread(
            prepare, res, body, confine=pinned if pin is not None else None
        )
    finally:
        body.close()

    async def work(conn: psycopg.AsyncConnection[Any]) -> Done:
        failed = await references.first_elsewhere(conn, res, pin, records, state.registry.tenants())
        if failed is not None:
            raise with_line(failed[1], prepared.line_of(failed[0]))
        await copy_in(conn, res, prepared)
        return Done(201, {"count": prepared.count})

    try:
        # The key's fingerprint covers the body through its digest (the body may be 100 MiB).
        # COPY has no pipeline mode: this write waits for each answer.
        return await write(request, work, body=b"text/csv\0" + digest, pipeline=False)
    except ApiError as error:
        cause = error.__cause__
        if cause is None:
            raise
        raise with_line(error, failed_line(cause, prepared)) from cause
    finally:
        prepared.close()
