"""`/api/<resource>` and `/api/<resource>/<id>`: one implementation for every resource.

Each route is built from a `Resource` (api/models.py). Writes run in one
transaction that first records the author (api/writes.begin), answer with
`{"data": …, "txid": "…"}` and an `ETag: "<version>"`, honour `If-Match` and
`Idempotency-Key`, and turn every refusal into problem+json (api/errors.py).
Decisions are written down in docs/writes.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
from psycopg import sql
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import idempotency, references, transactions, writes
from api.bodies import is_array, parse, parse_array, read_body
from api.csvroute import import_csv, is_csv
from api.errors import ApiError, database_error
from api.idempotency import Reply
from api.identity import author_of, branch_pin, confine
from api.listing import cursor, plan
from api.models import Resource
from api.openapi import openapi
from api.paging import next_page
from api.push import push
from api.queries import queries
from api.writes import Done
from cdc.jsontext import dumps

Conn = psycopg.AsyncConnection[Any]
Work = Callable[[Conn], Awaitable[Done]]
T = TypeVar("T")
Handler = Callable[[Request, Resource], Awaitable[Response]]


def _reply(status: int, data: Any, txid: str | None = None, **headers: str) -> Reply:
    body = {"data": data} if txid is None else {"data": data, "txid": txid}
    return Reply(status, dumps(body).encode(), headers)


def _id(request: Request, res: Resource) -> Any:
    """The path's key, as the key column's type; anything else names no row, hence 404."""
    raw = request.path_params["id"]
    try:
        return res.parse_key(raw)
    except ValueError:
        raise writes.missing(res, repr(raw)) from None


def _tenants(request: Request) -> dict[str, str]:
    """`schema.table` -> tenant column of the served resources (api/references.py)."""
    tenants: dict[str, str] = request.state.registry.tenants()
    return tenants


def _pinned_tenant(res: Resource, pin: Any) -> dict[str, Any] | None:
    """A pinned token's tenant, for a body that leaves the tenant column out."""
    if pin is None or res.tenant is None:
        return None
    return {res.tenant: pin if isinstance(pin, int) else str(pin)}


def _tags(header: str | None) -> list[str] | None:
    """The ETags an If-Match accepts, unquoted (None: any). Weak tags match nothing.

    An entity-tag is quoted (RFC 9110): `If-Match: 3` is refused with a 400 that says
    so, rather than matching nothing and answering 412 for a version that is right.
    """
    if header is None or header.strip() == "*":
        return None
    out = []
    for item in header.split(","):
        tag = item.strip()
        if tag.startswith("W/"):
            continue  # a weak tag never matches strongly
        inner = tag[1:-1]
        if len(tag) < 2 or tag[0] != '"' or tag[-1] != '"' or '"' in inner:
            raise ApiError(400, f'ETags are quoted: send If-Match: "{tag.strip(chr(34))}", '
                                f"not {tag}")  # fmt: skip
        if inner.isascii():
            out.append(inner)
    return out


async def _write(
    request: Request, work: Work, *, body: bytes, deleting: bool = False, pipeline: bool = True
) -> Response:
    """Run `work` in one write transaction: author and txid first, Idempotency-Key around it.

    Each attempt (api/transactions.py) takes its own pooled connection, so a retry
    does not hold one while it waits; refusals are raised as ApiError.
    """
    state: Any = request.state
    key = idempotency.key_of(request)
    author = author_of(request, mutation_id=key)
    scope = author.actor or ""
    fp = idempotency.fingerprint(request.method, request.url.path, body)

    async def keyed(conn: Conn) -> Response:
        if key is not None:
            stored = await idempotency.claim(conn, scope, key, fp, state.settings.idempotency_ttl_s)
            if stored is not None:
                return stored.response(replayed=True)
        # Pipelined: the author, the write and their answers take one round trip.
        announced = await writes.announce(conn, author)
        done = await work(conn)
        reply = _reply(done.status, done.data, await writes.txid_of(announced), **done.headers)
        if key is not None:
            await idempotency.remember(conn, scope, key, reply)
        return reply.response()

    return await transactions.run(
        state.pool.connection, keyed, deleting=deleting, pipeline=pipeline
    )


async def _read_one(request: Request, read: Callable[[Conn], Awaitable[T]]) -> T:
    """Run one read-only statement (no transaction: one statement is one snapshot)."""
    state: Any = request.state
    try:
        async with state.pool.connection() as conn:
            return await read(conn)
    except psycopg.Error as exc:
        error = database_error(exc)
        if error is None:
            raise
        raise error from exc


async def _rows(conn: Conn, query: sql.Composed, params: dict[str, Any]) -> list[Any]:
    cur = await conn.execute(query, params)
    rows: list[Any] = await cur.fetchall()
    return rows


async def list_rows(request: Request, res: Resource) -> Response:
    """`GET /api/<r>`: a page of rows, filtered, searched and ordered; `next` for more."""
    state: Any = request.state
    table = (await state.catalog.get([res.qualified])).get(res.qualified)
    if table is None:
        raise ApiError(503, f"{res.qualified} is not tracked; run `pgtide track {res.qualified}`")
    listing = plan(res, table, request.query_params, branch_pin(request, res, writing=False))
    query = listing.query(queries["list_rows"], res.identifier)
    rows = await _read_one(request, lambda conn: _rows(conn, query, listing.params))
    page = rows[: listing.limit]
    params = None
    if len(rows) > listing.limit:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "after"]
        params.append(("after", cursor(listing.order, tuple(page[-1][1:]))))
    next_url, headers = next_page(request.url.path, params)
    body = dumps({"data": [r[0] for r in page], "next": next_url})
    return Response(body, 200, headers, media_type="application/json")


async def get_row(request: Request, res: Resource) -> Response:
    """`GET /api/<r>/<id>`: the row with its ETag; 304 when If-None-Match names it."""
    id = _id(request, res)
    pin = branch_pin(request, res, writing=False)
    found = await _read_one(request, lambda conn: writes.fetch(conn, res, id, pin))
    if found is None:
        raise writes.missing(res, id)
    none_match = request.headers.get("if-none-match")
    if none_match is not None:
        accepted = _tags(none_match)
        if accepted is None or found.tag in accepted:
            return Response(status_code=304, headers={"ETag": found.etag})
    return _reply(200, found.row, ETag=found.etag).response()


async def create(request: Request, res: Resource) -> Response:
    """`POST /api/<r>`: one object, or an array or CSV in one transaction (all or nothing)."""
    pin = branch_pin(request, res, writing=True)
    if is_csv(request.headers.get("content-type", "")):  # docs/writes.md, CSV import
        return await import_csv(request, res, pin, _write)
    raw = await read_body(request)
    if is_array(raw):
        many = [res.columns_of(body) for body in parse_array(res.create, raw)]
        for values in many:
            confine(res, values, pin)

        async def create_many(conn: psycopg.AsyncConnection[Any]) -> Done:
            await references.check_many(conn, res, pin, many, _tenants(request))
            rows = [s.row for s in await writes.insert_many(conn, res, many)]
            return Done(201, rows)

        return await _write(request, create_many, body=raw)
    one = res.columns_of(parse(res.create, raw, _pinned_tenant(res, pin)))
    confine(res, one, pin)

    async def create_one(conn: psycopg.AsyncConnection[Any]) -> Done:
        await references.check(conn, res, pin, one, _tenants(request))
        made = await writes.insert(conn, res, one)
        location = f"/api/{res.name}/{quote(str(made.row[res.key]), safe='')}"
        return Done(201, made.row, {"ETag": made.etag, "Location": location})

    return await _write(request, create_one, body=raw)


async def _update(request: Request, res: Resource, *, replace: bool) -> Response:
    id = _id(request, res)
    pin = branch_pin(request, res, writing=True)
    raw = await read_body(request)
    body = parse(res.create if replace else res.patch, raw, _pinned_tenant(res, pin))
    values = res.columns_of(body)
    confine(res, values, pin)
    if values.pop(res.key, None) not in (None, id):
        message = f"must be the {res.key} in the path (or left out)"
        errors = [{"field": res.key, "message": message}]
        raise ApiError(422, f"invalid {res.key}: {message}", errors=errors)
    tags = _tags(request.headers.get("if-match"))

    async def update(conn: psycopg.AsyncConnection[Any]) -> Done:
        await references.check(conn, res, pin, values, _tenants(request))
        done = await writes.update(conn, res, id, values, tags, pin, replace=replace)
        if done is None:
            raise await writes.refusal(conn, res, id, pin)
        return Done(200, done.row, {"ETag": done.etag})

    return await _write(request, update, body=raw)


async def replace_row(request: Request, res: Resource) -> Response:
    """`PUT /api/<r>/<id>`: every writable field; those left out take their defaults."""
    return await _update(request, res, replace=True)


async def patch_row(request: Request, res: Resource) -> Response:
    """`PATCH /api/<r>/<id>`: the fields given, the others as they are."""
    return await _update(request, res, replace=False)


async def delete_row(request: Request, res: Resource) -> Response:
    """`DELETE /api/<r>/<id>`: answers with the deleted row and the txid (so not 204)."""
    id = _id(request, res)
    pin = branch_pin(request, res, writing=True)
    tags = _tags(request.headers.get("if-match"))

    async def delete(conn: psycopg.AsyncConnection[Any]) -> Done:
        gone = await writes.delete(conn, res, id, tags, pin)
        if gone is None:
            raise await writes.refusal(conn, res, id, pin)
        return Done(200, gone.row)

    return await _write(request, delete, body=b"", deleting=True)


def resource_of(request: Request) -> Resource:
    """The resource the path names, among the installed apps' (404 otherwise)."""
    name = request.path_params["resource"]
    res: Resource | None = request.state.registry.get(name)
    if res is None:
        raise ApiError(404, f"no resource {name!r} is served here")
    return res


def _endpoint(handlers: Mapping[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method  # Starlette adds HEAD
        return await handlers[method](request, resource_of(request))

    return endpoint


COLLECTION: Mapping[str, Handler] = {"GET": list_rows, "POST": create}
ITEM: Mapping[str, Handler] = {
    "GET": get_row, "PUT": replace_row, "PATCH": patch_row, "DELETE": delete_row,
}  # fmt: skip


def resource_routes() -> list[Route]:
    """`POST /api/sync/push`, `/openapi.json`, then every resource's routes.

    The resources are the installed apps' (`request.state.registry`), looked up per
    request: the app is built before the database says which apps are installed.
    """
    return [
        Route("/api/sync/push", push, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/{resource}", _endpoint(COLLECTION), methods=[*COLLECTION]),
        Route("/api/{resource}/{id}", _endpoint(ITEM), methods=[*ITEM]),
    ]
