"""Reading and validating JSON request bodies: 415, 413, 400 and 422 before any database work.

The body is read whole (up to `MAX_BODY_BYTES`) before a connection is taken,
so a slow client never holds one. Validation runs on the raw bytes with the
models' strict JSON mode: `"5"` is not an integer, `true` not a number.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request

from api.errors import MAX_ERRORS, ApiError, field_path, invalid, unprocessable

MAX_BODY_BYTES = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and
                                           media.endswith("+json"))  # fmt: skip


async def read_body(request: Request) -> bytes:
    """The raw JSON body: 415 if it is not JSON, 413 if too large, 400 if empty."""
    if not _is_json(request.headers.get("content-type", "")):
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: Content-Length may lie
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "the body is empty; send a JSON object")
    return body


def _too_large() -> ApiError:
    return ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes; split it")


def _malformed(exc: ValidationError) -> ApiError | None:
    for e in exc.errors(include_url=False, include_input=False):
        if e["type"] in ("json_invalid", "json_type"):
            return ApiError(400, f"malformed JSON: {e['msg'].removeprefix('Invalid JSON: ')}")
    return None


def parse(model: type[M], raw: bytes, defaults: Mapping[str, Any] | None = None) -> M:
    """One object of `model`: 400 if the JSON is malformed, 422 naming each bad field.

    `defaults` fill fields the object leaves out (a pinned token's tenant), as if sent.
    """
    if defaults:
        raw = _with_defaults(raw, defaults)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _malformed(exc) or unprocessable(invalid(exc)) from None


def _with_defaults(raw: bytes, defaults: Mapping[str, Any]) -> bytes:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw  # malformed: the validation below says so
    if not isinstance(data, dict) or all(k in data for k in defaults):
        return raw
    return json.dumps({**{k: v for k, v in defaults.items()}, **data}).encode()


@functools.cache
def _list_of(model: type[BaseModel]) -> TypeAdapter[list[Any]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


def is_array(raw: bytes) -> bool:
    """Whether the JSON text is an array (its first significant byte is `[`)."""
    return raw.lstrip(b" \t\r\n").startswith(b"[")


def parse_array(model: type[M], raw: bytes) -> list[M]:
    """A non-empty array of `model`; a 422 names the first failing element's `index`."""
    try:
        items: list[M] = _list_of(model).validate_json(raw)
    except ValidationError as exc:
        bad = _malformed(exc)
        if bad is not None:
            raise bad from None
        errors: list[dict[str, Any]] = [
            {"index": e["loc"][0], "field": field_path(e["loc"][1:]), "message": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
            if e["loc"] and isinstance(e["loc"][0], int)
        ][:MAX_ERRORS]
        if not errors:  # the body itself is not an array of objects
            raise unprocessable(invalid(exc)) from None
        first = errors[0]
        raise ApiError(
            422,
            f"element {first['index']} is invalid: {first['field']}: {first['message']}",
            index=first["index"],
            errors=errors,
        ) from None
    if not items:
        raise ApiError(422, "the array is empty; send at least one object")
    return items
