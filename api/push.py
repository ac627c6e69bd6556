"""`POST /api/sync/push`: an offline client's queued mutations, applied in order.

Each mutation runs in its own transaction, which claims its mutation id in
`pgtide.sync_mutations` first: an id applied before is reported `duplicate` and not
applied again (a concurrent push of the same id waits on the claim, then sees
it). Each result is `applied` (with the row and txid), `duplicate` (with the
txid that applied it), `conflict` (with the server's current row, or null when
there is none) or `rejected` (with what was wrong); only `applied` leaves a
trace, so a conflicting or rejected mutation may be sent again. One failing
mutation never stops the ones after it. Policies (docs/writes.md):

- `version`: an update or delete applies only when `base_version` is the row's version;
- `lww`: a write applies only when its `client_ts` is later than the row's last write
  (the last pushed `client_ts`, kept in `pgtide.sync_clocks`, or the row's `updated_at` when
  another writer changed it since); a delete leaves a tombstone, so a late update or
  insert does not bring the row back.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import psycopg
from pydantic import AwareDatetime, Field, ValidationError
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from api import references, transactions, writes
from api.bodies import parse, read_body
from api.errors import ApiError, invalid
from api.identity import author_of, branch_pin, confine
from api.models import INT_MAX, Resource, WriteModel
from api.queries import queries
from cdc.jsontext import dumps

MAX_MUTATIONS = 1000

Result = dict[str, Any]


Key = Annotated[str, Field(min_length=1, max_length=1000)]


class Mutation(WriteModel):
    """One queued mutation, as the client recorded it."""

    mutation_id: Annotated[str, Field(min_length=1, max_length=200)]
    resource: str
    op: Literal["insert", "create", "update", "delete"]  # create: an alias of insert
    id: UUID | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | Key | None = None
    data: dict[str, Any] | None = None  # ignored for delete
    base_version: Annotated[int, Field(ge=1, le=INT_MAX)] | None = None
    base_etag: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    client_ts: AwareDatetime | None = None


class PushRequest(WriteModel):
    """A push: who sends it, the conflict policy, the mutations in the order made."""

    client_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    policy: Literal["version", "lww"] = "version"
    mutations: Annotated[list[Any], Field(max_length=MAX_MUTATIONS)]


@dataclass(frozen=True)
class Planned:
    """A mutation that passed validation: its resource, op, row id and column values."""

    m: Mutation
    res: Resource
    op: str  # insert | update | delete
    id: Any  # the row's key, as the key column's type
    values: dict[str, Any]
    pin: Any = None  # the tenant a pinned token confines it to
    tags: list[str] | None = None  # policy version: the ETag the row must have


class Rejected(Exception):
    """A mutation refused before the database: its detail and field errors."""

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail, self.errors = detail, errors or []


async def push(request: Request) -> Response:
    """Apply the mutations in order; answer 200 with one result per mutation."""
    return await _push(request)


async def _push(request: Request) -> Response:
    req = parse(PushRequest, await read_body(request))
    sender = author_of(request, origin=req.client_id)  # bad headers: 400 before any write
    # Mutation ids belong to their sender: the token (the actor it writes as) and the
    # client within it, so one sender's id never answers for another's.
    scope = f"{_token_name(request) or ''}/{req.client_id or ''}"
    state: Any = request.state
    results: list[Result] = []
    tenants = state.registry.tenants()  # for the references of pinned writes
    async with state.pool.connection() as conn:
        # Pushes pay for forgetting old mutation ids: a few per push (docs/writes.md).
        await conn.execute(queries["purge_mutations"], {"ttl": state.settings.mutation_ttl})
        for index, raw in enumerate(req.mutations):
            head = {"index": index, "mutation_id": _mutation_id(raw)}
            try:
                planned = _plan(raw, req.policy, state.registry)
                pin = branch_pin(request, planned.res, writing=True)
                confine(planned.res, planned.values, pin)
            except (Rejected, ApiError) as exc:
                errors = exc.errors if isinstance(exc, Rejected) else []
                results.append({**head, "status": "rejected", "detail": exc.detail,
                                "errors": errors})  # fmt: skip
                continue
            planned = replace(planned, pin=pin)
            author = replace(sender, mutation_id=planned.m.mutation_id)
            results.append({**head, **await _apply(conn, planned, req, author, scope, tenants)})
    return Response(dumps({"results": results}), 200, media_type="application/json")


def _token_name(request: Request) -> str | None:
    principal = getattr(request.state, "principal", None)
    if principal is None or principal.token_id is None:
        return None  # auth off: client_id alone names the sender
    name: str = principal.name
    return name


def _mutation_id(raw: Any) -> str | None:
    value = raw.get("mutation_id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _key(res: Resource, m: Mutation) -> Any:
    """The mutation's row key as the resource's key type (None when it names none)."""
    if m.id is None:
        return None
    try:
        return res.parse_key(str(m.id))
    except ValueError:
        errors = [{"field": "id", "message": f"must be a {res.key_kind.__name__} key"}]
        raise Rejected(f"id is not a key of {res.name}", errors) from None


def _base_tags(res: Resource, m: Mutation, op: str) -> list[str]:
    """Policy version: the ETag the row must still have (base_etag, or base_version)."""
    if m.base_etag is not None:
        return [m.base_etag.removeprefix('"').removesuffix('"')]
    if m.base_version is not None and res.version is not None:
        return [str(m.base_version)]
    needs = "base_version or base_etag" if res.version else "base_etag (the row's ETag)"
    raise Rejected(f"policy version: {op} needs {needs}")


def _plan(raw: Any, policy: str, registry: Any) -> Planned:
    """Validate one mutation (envelope, resource, data, what the policy needs)."""
    try:
        m = Mutation.model_validate_json(to_json(raw))
    except ValidationError as exc:
        raise Rejected("invalid mutation", invalid(exc)) from None
    res: Resource | None = registry.get(m.resource)
    if res is None:
        known = ", ".join(registry.resources)
        raise Rejected(f"unknown resource {m.resource!r}; use one of {known}")
    op = "insert" if m.op == "create" else m.op
    key = _key(res, m)
    if op != "insert" and key is None:
        raise Rejected(f"{op} needs the row's id")
    tags = _base_tags(res, m, op) if policy == "version" and op != "insert" else None
    if policy == "lww" and m.client_ts is None:
        raise Rejected("policy lww: every mutation needs client_ts")
    values: dict[str, Any] = {}
    if op != "delete":
        data = dict(m.data or {})
        if op == "insert" and key is not None and res.key in res.create.model_fields:
            given = data.setdefault(res.key, m.id if isinstance(m.id, int) else str(m.id))
            if str(given) != str(m.id):
                errors = [{"field": f"data.{res.key}", "message": "must be the mutation's id"}]
                raise Rejected(f"data.{res.key} differs from the mutation's id", errors)
        model = res.create if op == "insert" else res.patch
        try:
            body = model.model_validate_json(to_json(data))
        except ValidationError as exc:
            errors = invalid(exc, prefix=("data",))
            raise Rejected("invalid data: " + "; ".join(
                f"{e['field']}: {e['message']}" for e in errors[:5]), errors) from None  # fmt: skip
        values = res.columns_of(body)
    row_id = key if key is not None else values.get(res.key)
    return Planned(m, res, op, row_id, values, tags=tags)


async def _apply(
    conn: psycopg.AsyncConnection[Any],
    p: Planned,
    req: PushRequest,
    author: writes.Author,
    sender: str,
    tenants: dict[str, str],
) -> Result:
    """One mutation in its own transaction on the push's connection; its result.

    Retried on deadlock (api/transactions.py). Only an applied mutation commits: a
    duplicate, a conflict or a rejection leaves no trace, not even the claim. A
    refusal by the database is the mutation's `rejected`; the database's own failure
    (503) ends the push, and resending is safe: applied ones come back `duplicate`.
    """
    return await transactions.run(
        lambda: nullcontext(conn),
        lambda tx: _mutate(tx, p, req, author, sender, tenants),
        deleting=p.op == "delete",
        refused=_rejected,
        commit=lambda result: result["status"] == "applied",
    )


async def _mutate(
    conn: psycopg.AsyncConnection[Any],
    p: Planned,
    req: PushRequest,
    author: writes.Author,
    sender: str,
    tenants: dict[str, str],
) -> Result:
    """Apply one mutation in the caller's transaction: applied, duplicate, conflict, rejected."""
    txid = await writes.begin(conn, author)
    duplicate = await _duplicate(conn, p, req, author, sender)
    if duplicate is not None:
        return duplicate
    if p.op != "delete":  # a pinned write references only its branch's rows
        try:
            await references.check(conn, p.res, p.pin, p.values, tenants)
        except ApiError as exc:  # a reference outside the pin's branch: as a missing row
            return _rejected(exc)
    decide = _lww if req.policy == "lww" else _by_version
    result = await decide(conn, p)
    if result["status"] == "applied":
        result["txid"] = txid
        stored: writes.Stored = result.pop("stored")
        result["row"] = stored.row
        if p.m.client_ts is not None:
            await _set_clock(conn, p, stored)
    return result


async def _duplicate(
    conn: psycopg.AsyncConnection[Any],
    p: Planned,
    req: PushRequest,
    author: writes.Author,
    sender: str,
) -> Result | None:
    """`duplicate` when the sender applied this mutation id before; else it is claimed now."""
    cur = await conn.execute(queries["claim_mutation"], {
        "sender": sender, "mutation_id": p.m.mutation_id, "client_id": req.client_id,
        "resource": p.res.name, "op": p.op, "row_id": None if p.id is None else str(p.id),
    })  # fmt: skip
    if await cur.fetchone() is None:
        cur = await conn.execute(
            queries["applied_mutation"], {"sender": sender, "mutation_id": p.m.mutation_id}
        )
        first = await cur.fetchone()
        return {"status": "duplicate", "txid": first[0] if first else None}
    cur = await conn.execute(queries["logged_mutation"], {
        "mutation_id": p.m.mutation_id, "actor": author.actor, "origin": author.origin,
    })  # fmt: skip
    logged = await cur.fetchone()
    if logged is not None:  # applied before its id was forgotten: not again
        return {"status": "duplicate", "txid": logged[0]}
    return None


async def _set_clock(conn: psycopg.AsyncConnection[Any], p: Planned, stored: writes.Stored) -> None:
    """Keep the pushed client_ts as the row's last write time (lww), with the ETag it left."""
    assert p.m.client_ts is not None
    await conn.execute(queries["set_clock"], {
        "table": p.res.name, "id": str(stored.row[p.res.key]), "client_ts": p.m.client_ts,
        "etag": None if p.op == "delete" else stored.tag,
        "tenant": None if p.res.tenant is None else str(stored.row[p.res.tenant]),
    })  # fmt: skip


def _rejected(error: ApiError) -> Result:
    return {"status": "rejected", "detail": error.detail, "errors": error.members.get("errors", [])}


def _conflict(found: writes.Stored | None, detail: str) -> Result:
    return {"status": "conflict", "row": None if found is None else found.row, "detail": detail}


def _applied(stored: writes.Stored | None) -> Result:
    assert stored is not None  # an unconditional write of a locked row finds it
    return {"status": "applied", "stored": stored}


async def _by_version(conn: psycopg.AsyncConnection[Any], p: Planned) -> Result:
    """Policy `version`: an update or delete applies at the base version (or ETag) only."""
    if p.op == "insert":
        current = await writes.fetch(conn, p.res, p.id, p.pin) if p.id is not None else None
        if current is not None or await _elsewhere(conn, p):
            return _conflict(current, "a row with this id already exists")
        return _applied(await writes.insert(conn, p.res, p.values))
    assert p.id is not None and p.tags is not None
    if p.op == "update":
        done = await writes.update(conn, p.res, p.id, p.values, p.tags, p.pin)
    else:
        done = await writes.delete(conn, p.res, p.id, p.tags, p.pin)
    if done is not None:
        return _applied(done)
    current = await writes.fetch(conn, p.res, p.id, p.pin)
    if current is None:
        return _conflict(None, "the row does not exist (it may have been deleted)")
    if p.res.version is not None and p.m.base_etag is None:
        return _conflict(current, f"base_version {p.m.base_version} is not the row's version "
                                  f"{current.row[p.res.version]}")  # fmt: skip
    return _conflict(current, f"base_etag {p.tags[0]} is not the row's ETag {current.etag}")


async def _lww(conn: psycopg.AsyncConnection[Any], p: Planned) -> Result:
    """Policy `lww`: the write applies when its client_ts is later than the row's last write."""
    assert p.m.client_ts is not None
    current, last = None, None
    if p.id is not None:
        locked = await writes.lock(conn, p.res, p.id, p.pin)
        cur = await conn.execute(queries["lock_clock"], {"table": p.res.name, "id": str(p.id)})
        clock = await cur.fetchone()
        if clock is not None and p.pin is not None and clock[2] != str(p.pin):
            clock = None  # another branch's clock (or one kept before clocks named a branch)
        if locked is not None:
            current, written_at = locked
            # The pushed clock speaks for the row while no one else wrote it since.
            last = clock[0] if clock is not None and clock[1] == current.tag else written_at
        elif clock is not None:
            last = clock[0]  # a tombstone: the row was deleted by a push at that time
    if last is not None and p.m.client_ts <= last:
        return _conflict(current, f"the row was last written at {_iso(last)}, "
                                  f"not before client_ts {_iso(p.m.client_ts)}")  # fmt: skip
    if p.op == "insert":
        if current is not None or await _elsewhere(conn, p):
            return _conflict(current, "a row with this id already exists")
        return _applied(await writes.insert(conn, p.res, p.values))
    if current is None:
        return _conflict(None, "the row does not exist (it may have been deleted)")
    assert p.id is not None
    if p.op == "update":
        return _applied(await writes.update(conn, p.res, p.id, p.values, None, p.pin))
    return _applied(await writes.delete(conn, p.res, p.id, None, p.pin))


async def _elsewhere(conn: psycopg.AsyncConnection[Any], p: Planned) -> bool:
    """Whether a pinned insert's id is taken by a row its branch cannot see.

    Answered as a conflict like an id of its own branch (without the row), not as the
    database's refusal: the same answer whichever branch holds the id.
    """
    if p.pin is None or p.id is None:
        return False
    return await writes.fetch(conn, p.res, p.id, None) is not None


def _iso(moment: datetime) -> str:
    return moment.isoformat()
