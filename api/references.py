"""Branch pins across foreign keys: a pinned write references only rows of its branch.

A branch-pinned token writes only rows of its branch (api/identity.py), but a row of
its branch may point at another row: an order at a client. Without a check, a pinned
token could create an order of its branch that references another branch's client
(which then blocks that client's delete). So before a pinned write, every foreign key
of the resource's table whose referenced table has a tenant column is checked in the
write's transaction: the referenced row must exist *in the pin's branch*, and it is
locked (FOR SHARE) until the write commits so that it cannot move away meanwhile. A
reference to another branch's row gets exactly the 422 a reference to a missing row
gets (`missing_reference`), naming the field: its existence is not revealed.

The referenced table's tenant column is the one its resource declares, else the
writing resource's (`branch_id`); tables without it are not checked. Nor is the key
from the writing resource's tenant column to the table whose key is the tenant
(`clients.branch_id` onto `branches.id`): the pin set that column, so the row it
references is the pin's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from pydantic_core import to_json

from api.errors import ApiError, missing_reference
from api.models import Resource
from api.queries import queries


@dataclass(frozen=True)
class ForeignKey:
    """One foreign key of a resource's table onto a table with a tenant column."""

    constraint: str
    columns: tuple[str, ...]  # in the writing table
    parent: sql.Identifier  # the referenced table
    referenced: tuple[str, ...]  # its columns, in the key's order
    tenant: str  # its tenant column


async def tenant_keys(
    conn: psycopg.AsyncConnection[Any], res: Resource, tenants: Mapping[str, str]
) -> list[ForeignKey]:
    """The resource's foreign keys whose referenced table has a tenant column."""
    cur = await conn.execute(
        queries["foreign_keys"], {"schema": res.schema_name, "table": res.table_name}
    )
    out = []
    for name, columns, schema, table, referenced, parent_columns in await cur.fetchall():
        tenant = tenants.get(f"{schema}.{table}", res.tenant)
        own = tuple(columns) == (res.tenant,) and tuple(referenced) == (tenant,)
        if tenant is not None and tenant in (parent_columns or ()) and not own:
            out.append(ForeignKey(name, tuple(columns), sql.Identifier(schema, table),
                                  tuple(referenced), tenant))  # fmt: skip
    return out


async def first_elsewhere(
    conn: psycopg.AsyncConnection[Any],
    res: Resource,
    pin: Any,
    records: Sequence[Mapping[str, Any]],
    tenants: Mapping[str, str],
) -> tuple[int, ApiError] | None:
    """The first record that references a row outside the pin's branch, with its 422.

    `records` are column values as written (absent columns are not checked; a null in
    a key's column means no reference). None when every reference stays in the branch.
    """
    if pin is None or res.tenant is None or not records:
        return None
    found: list[tuple[int, ApiError]] = []
    for fk in await tenant_keys(conn, res, tenants):
        keys = [
            {"i": i, "k": {ref: values[col] for col, ref in zip(fk.columns, fk.referenced,
                                                                  strict=True)}}
            for i, values in enumerate(records)
            if all(values.get(col) is not None for col in fk.columns)
        ]  # fmt: skip
        if not keys:
            continue
        match = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier("p", c), sql.Identifier("k", c))
            for c in fk.referenced
        )
        query = sql.SQL(queries["first_foreign_elsewhere"]).format(
            parent=fk.parent, match=match, tenant=sql.Identifier(fk.tenant)
        )
        cur = await conn.execute(query, {"keys": to_json(keys).decode(), "pin": str(pin)})
        row = await cur.fetchone()
        if row is not None:
            found.append((row[0], missing_reference(", ".join(fk.columns), fk.constraint)))
    return min(found, key=lambda f: f[0]) if found else None


async def check(
    conn: psycopg.AsyncConnection[Any],
    res: Resource,
    pin: Any,
    values: Mapping[str, Any],
    tenants: Mapping[str, str],
) -> None:
    """Raise the 422 when one record (a create, PUT or PATCH) references outside the branch."""
    failed = await first_elsewhere(conn, res, pin, [values], tenants)
    if failed is not None:
        raise failed[1]


async def check_many(
    conn: psycopg.AsyncConnection[Any],
    res: Resource,
    pin: Any,
    records: Sequence[Mapping[str, Any]],
    tenants: Mapping[str, str],
) -> None:
    """The same for an array: the first failing element named as a refused insert names it."""
    failed = await first_elsewhere(conn, res, pin, records, tenants)
    if failed is not None:
        index, error = failed
        raise ApiError(error.status, f"element {index}: {error.detail}", index=index,
                       **error.members)  # fmt: skip
