"""`GET /openapi.json`: an OpenAPI 3.1 document generated from the resource models.

Built once per process from the same pydantic models that validate the
requests, so the document and the validation cannot drift apart.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.listing import DEFAULT_LIMIT, MAX_LIMIT
from api.models import Resource
from api.push import Mutation, PushRequest
from cdc.logquery import DEFAULT_LIMIT as LOG_LIMIT
from cdc.logquery import MAX_LIMIT as LOG_MAX_LIMIT

REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": REF.format(model=name)}


def _problems(*statuses: int) -> dict[str, Any]:
    """Problem responses: these, and those any /api route may give (auth, database)."""
    return {
        str(s): {"description": "problem+json",
                 "content": {"application/problem+json": {"schema": _ref("Problem")}}}
        for s in sorted({*statuses, 401, 403, 503})
    }  # fmt: skip


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


WRITE_HEADERS = [
    _header("Idempotency-Key", "a repeat with the same key and body returns the first response"),
    _header("X-Pgtide-Actor", "who writes, recorded in sync_log.actor"),
    _header("X-Pgtide-Origin", "the branch or device, recorded in sync_log.origin"),
]
IF_MATCH = _header("If-Match", 'the version the write expects, as an ETag ("3")')


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _envelope(data: dict[str, Any], *, txid: bool) -> dict[str, Any]:
    props: dict[str, Any] = {"data": data}
    if txid:
        props["txid"] = {"type": "string", "description": "the write's transaction id"}
    return {"type": "object", "properties": props, "required": list(props)}


# Every listing's `next` is the same kind of thing: the next page's URL (api/paging.py).
NEXT = {"type": ["string", "null"], "format": "uri-reference",
        "description": "the URL of the next page, relative to the server (also the `Link` "
                       "header's rel=next); null on the last page"}  # fmt: skip


def _page(items: dict[str, Any], **more: Any) -> dict[str, Any]:
    props = {**items, "next": NEXT, **more}
    return {"type": "object", "required": list(props), "properties": props}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}  # fmt: skip


def _audit_paths() -> dict[str, Any]:
    """`GET /api/sync-log`, the audit listing (docs/audit.md)."""
    text = {"type": ["string", "null"]}
    texts = {"type": ["array", "null"], "items": {"type": "string"}}
    change = {"type": "object", "properties": {
        "cursor": {"type": "string"}, "seq": {"type": "integer"}, "txid": {"type": "string"},
        "id": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
        "schema": {"type": "string"}, "table": {"type": "string"}, "op": {"type": "string"},
        "pk": {"type": ["object", "null"]}, "row": {}, "old": {}, "changed": texts,
        "actor": text, "origin": text, "mutation_id": text, "db_role": {"type": "string"},
    }}  # fmt: skip
    change["required"] = list(change["properties"])
    page = _page({"changes": {"type": "array", "items": change}}, next_cursor={
        "type": ["string", "null"], "description": "the `after` of `next` (a seq)"})  # fmt: skip
    parameters = [
        _query("table", "table names, comma-separated"),
        _query("op", "insert, update, delete, truncate, message; comma-separated"),
        _query("pk", "one row's key (bare, or JSON); needs exactly one table"),
        _query("actor", "who made the change"), _query("origin", "where it came from"),
        _query("txid", "the writing transaction"),
        _query("from", "ISO 8601, inclusive"), _query("to", "ISO 8601, exclusive"),
        _query("after", "a seq: the changes after it (before it with order=desc)"),
        _query("limit", "changes per page", {"type": "integer", "minimum": 1,
                                             "maximum": LOG_MAX_LIMIT, "default": LOG_LIMIT}),
        _query("order", "seq order", {"type": "string", "enum": ["asc", "desc"]}),
    ]  # fmt: skip
    return {"/api/sync-log": {"get": {
        "tags": ["audit"], "summary": "Sequenced changes, filtered, in seq order (audit scope)",
        "parameters": parameters, "responses": {"200": _json(page), **_problems(400)},
    }}}  # fmt: skip


def _resource_paths(res: Resource) -> dict[str, Any]:
    row = _ref(res.read)
    key_schema: dict[str, Any] = {"type": "string"}
    if res.key_kind is UUID:
        key_schema["format"] = "uuid"
    elif res.key_kind is int:
        key_schema = {"type": "integer"}
    item_id = {"name": "id", "in": "path", "required": True, "schema": key_schema,
               "description": f"the row's {res.key}"}  # fmt: skip
    filters = [
        {"name": column, "in": "query", "required": False,
         "description": "filter: eq.v, neq.v, lt.v, lte.v, gt.v, gte.v, in.(a,b), is.null",
         "schema": {"type": "string"}}
        for column in res.read.model_fields
    ]  # fmt: skip
    listing = [
        {"name": "search", "in": "query", "schema": {"type": "string"},
         "description": f"case-insensitive substring of {', '.join(res.search_columns)}"},
        {"name": "order", "in": "query", "schema": {"type": "string"},
         "description": "col[.asc|.desc],… over " + ", ".join(sorted(res.order_columns))},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                    "default": DEFAULT_LIMIT}},
        {"name": "after", "in": "query", "schema": {"type": "string"},
         "description": "the opaque cursor of the `next` link"},
    ]  # fmt: skip
    page = _page({"data": {"type": "array", "items": row}})
    written = _json(_envelope(row, txid=True))
    created = _json(_envelope({"oneOf": [row, {"type": "array", "items": row}]}, txid=True))
    body = {"required": True, "content": {"application/json": {"schema": _ref(res.create)}}}
    patch = {"required": True, "content": {"application/json": {"schema": _ref(res.patch)}}}
    create_body = {"required": True, "content": {"application/json": {"schema": {
        "oneOf": [_ref(res.create), {"type": "array", "items": _ref(res.create), "minItems": 1}]
    }}}}  # fmt: skip
    tag = [res.name]
    return {
        f"/api/{res.name}": {
            "get": {"tags": tag, "summary": f"List {res.name}", "parameters": listing + filters,
                    "responses": {"200": _json(page), **_problems(400)}},
            "post": {"tags": tag, "summary": f"Create {res.name} (an object or an array)",
                     "parameters": WRITE_HEADERS, "requestBody": create_body,
                     "responses": {"201": created, **_problems(400, 409, 413, 415, 422)}},
        },
        f"/api/{res.name}/{{id}}": {
            "get": {"tags": tag, "summary": "Read one row", "parameters": [item_id],
                    "responses": {"200": _json(_envelope(row, txid=False)), "304": {
                        "description": "not modified"}, **_problems(404)}},
            "put": {"tags": tag, "summary": "Replace a row (omitted fields take defaults)",
                    "parameters": [item_id, IF_MATCH, *WRITE_HEADERS], "requestBody": body,
                    "responses": {"200": written,
                                  **_problems(400, 404, 409, 412, 413, 415, 422)}},
            "patch": {"tags": tag, "summary": "Change some fields of a row",
                      "parameters": [item_id, IF_MATCH, *WRITE_HEADERS], "requestBody": patch,
                      "responses": {"200": written,
                                    **_problems(400, 404, 409, 412, 413, 415, 422)}},
            "delete": {"tags": tag, "summary": "Delete a row (answers with it)",
                       "parameters": [item_id, IF_MATCH, *WRITE_HEADERS],
                       "responses": {"200": written, **_problems(400, 404, 409, 412, 422)}},
        },
    }  # fmt: skip


@functools.cache
def document(resources: tuple[Resource, ...]) -> dict[str, Any]:
    """The OpenAPI document of the served resources (built once per set)."""
    models: list[type[BaseModel]] = [Mutation, PushRequest]
    for res in resources:
        models += [res.create, res.patch, res.read]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas["Problem"] = {
        "type": "object", "required": ["type", "title", "status", "detail", "code"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                       "status": {"type": "integer"}, "detail": {"type": "string"},
                       "code": {"type": "string"},
                       "errors": {"type": "array", "items": {"type": "object"}},
                       "index": {"type": "integer"}, "current": {"type": "object"}},
    }  # fmt: skip
    paths: dict[str, Any] = {
        "/health": {"get": {"summary": "The process is up",
                            "responses": {"200": _json({"type": "object"})}}},
        "/ready": {"get": {"summary": "Database and listener are up",
                           "responses": {"200": _json({"type": "object"}),
                                         **_problems(503)}}},
        "/events": {"get": {"summary": "The change stream (Server-Sent Events)", "parameters": [
            {"name": n, "in": "query", "schema": {"type": "string"}}
            for n in ("tables", "ops", "topics", "since", "snapshot")],
            "responses": {"200": {"description": "text/event-stream", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}}, **_problems(400, 503)}}},
        "/api/sync/push": {"post": {
            "summary": "Apply an offline client's queued mutations in order",
            "parameters": WRITE_HEADERS[1:],
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _ref(PushRequest)}}},
            "responses": {"200": _json({"type": "object", "properties": {"results": {
                "type": "array", "items": {"type": "object"}}}}),
                **_problems(400, 413, 415, 422)}}},
    }  # fmt: skip
    paths.update(_audit_paths())
    for res in resources:
        paths.update(_resource_paths(res))
    return {
        "openapi": "3.1.0",
        "info": {"title": "pgtide", "version": _version(),
                 "description": "Change-data-capture on PostgreSQL: writes, stream, push."},
        "paths": paths,
        "components": {"schemas": schemas},
    }  # fmt: skip


def _version() -> str:
    try:
        return importlib.metadata.version("pgtide")
    except importlib.metadata.PackageNotFoundError:
        return "0"


async def openapi(request: Request) -> Response:
    """`GET /openapi.json`."""
    return JSONResponse(document(tuple(request.state.registry.resources.values())))
