"""Dynapharm's models: one strict pydantic class per resource (the columns a client writes).

They mirror the tables of migrations/0001_domain.sql: types, CHECK constraints and
defaults. `id` may be chosen by the client; `version`, `created_at` and `updated_at`
are set by the table (pgtide.touch_v1).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field

from api.models import INT_MAX, Email, Money, Name, Text, WriteModel


class Branch(WriteModel):
    """A branch (pharmacy)."""

    id: UUID | None = None
    code: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
    name: Name
    city: Text | None = None
    timezone: Text = "UTC"


class Client(WriteModel):
    """A client of a branch."""

    id: UUID | None = None
    branch_id: UUID
    full_name: Name
    email: Email | None = None
    phone: Annotated[Text, Field(pattern=r"^[+]?[0-9 ()-]{5,20}$")] | None = None
    notes: Text | None = None


class Appointment(WriteModel):
    """A client's appointment at a branch."""

    id: UUID | None = None
    branch_id: UUID
    client_id: UUID
    starts_at: AwareDatetime
    duration_minutes: Annotated[int, Field(gt=0, le=1440)] = 30
    status: Literal["scheduled", "confirmed", "completed", "cancelled", "no_show"] = "scheduled"
    notes: Text | None = None


class Product(WriteModel):
    """A product a branch stocks; `sku` is unique per branch."""

    id: UUID | None = None
    branch_id: UUID
    sku: Name
    name: Name
    price: Money
    stock: Annotated[int, Field(ge=0, le=INT_MAX)] = 0


class Order(WriteModel):
    """A client's order."""

    id: UUID | None = None
    branch_id: UUID
    client_id: UUID
    status: Literal["new", "paid", "packed", "shipped", "delivered", "cancelled"] = "new"
    items: list[Any] = Field(default_factory=list)
    total: Money = Decimal(0)
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "EUR"


class Distributor(WriteModel):
    """A distributor a branch orders from."""

    id: UUID | None = None
    branch_id: UUID
    name: Name
    contact_email: Email | None = None
    agreement: dict[str, Any] = Field(default_factory=dict)


class StockRequest(WriteModel):
    """A branch's request for stock of a product."""

    id: UUID | None = None
    branch_id: UUID
    product_id: UUID
    distributor_id: UUID | None = None
    quantity: Annotated[int, Field(gt=0, le=INT_MAX)]
    status: Literal["requested", "approved", "ordered", "received", "rejected", "cancelled"] = (
        "requested"
    )
    note: Text | None = None
