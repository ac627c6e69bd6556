"""Dynapharm: a multi-branch pharmacy distributor, the app `pgtide demo` serves.

Seven resources (branches, clients, appointments, orders, stock requests,
distributors, products), each a table in `public` with a client-choosable uuid
`id`, a `version` raised on every write, `created_at`/`updated_at`, and the tenant
column `branch_id` that branch-pinned tokens are confined to. A branch's tenant is its
`id`: a pinned token reads its own branch's row (its name, for the branch app), and
writes no branch.
Install it with `pgtide migrate --app dynapharm` (or PGTIDE_APPS=dynapharm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from api.apps import App
from api.models import Resource, WriteModel
from apps.dynapharm import models
from apps.dynapharm.demo import load_data

HERE = Path(__file__).resolve().parent
_SERVER_SET = ("created_at", "updated_at")


def _resource(name: str, model: type[WriteModel], tenant: str | None) -> Resource:
    return Resource(name, model, version="version", tenant=tenant, server_set=_SERVER_SET)


def branch_of(conn: psycopg.Connection[Any], value: str) -> str | None:
    """A branch's id from its id or its code (`LIS`), for `token create --branch`."""
    row = conn.execute(
        "SELECT id::text FROM public.branches WHERE id::text = lower(%(v)s) OR code = %(v)s",
        {"v": value},
    ).fetchone()
    return None if row is None else str(row[0])


app = App(
    name="dynapharm",
    resources=(
        _resource("branches", models.Branch, "id"),
        _resource("clients", models.Client, "branch_id"),
        _resource("appointments", models.Appointment, "branch_id"),
        _resource("orders", models.Order, "branch_id"),
        _resource("stock_requests", models.StockRequest, "branch_id"),
        _resource("distributors", models.Distributor, "branch_id"),
        _resource("products", models.Product, "branch_id"),
    ),
    migrations=HERE / "migrations",
    demo=load_data,
    branch=branch_of,
)
