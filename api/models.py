"""The seven resources of the write API, each described once by a pydantic model.

A resource's *create* model lists the columns a client may write, with the
table's types, CHECK constraints and defaults (schema/migrations/0003_domain.sql);
the *patch* model (every field optional) and the *read* model (the row as
stored, with `version`, `created_at` and `updated_at`) are derived from it, so
one class per resource drives every route. The models are strict (no `"5"` for
an integer, no `true` for a number) and forbid unknown fields.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

INT_MAX = 2**31 - 1  # PostgreSQL `integer`


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it here, naming the field.
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    # Mirrors CHECK (btrim(x) <> ''): btrim removes spaces only.
    if not value.strip(" "):
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
Name = Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_blank)]
Email = Annotated[Text, Field(pattern=r"^[^@\s]+@[^@\s]+$")]
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]


class WriteModel(BaseModel):
    """Base of the create models: strict types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)


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


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the bare type, without `| None` or `Annotated`; whether None is allowed)."""
    nullable = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation, nullable


@dataclass(frozen=True)
class Resource:
    """One resource: its URL name (also its table's), its models and what they imply."""

    name: str
    create: type[WriteModel]
    patch: type[BaseModel] = field(init=False)
    read: type[BaseModel] = field(init=False)
    writable: tuple[str, ...] = field(init=False)  # columns a body may set, besides id
    json_columns: frozenset[str] = field(init=False)  # jsonb: values go as Jsonb
    search_columns: tuple[str, ...] = field(init=False)  # text columns `search=` scans
    order_columns: frozenset[str] = field(init=False)  # NOT NULL scalars `order=` accepts

    def __post_init__(self) -> None:
        fields = {n: f for n, f in self.create.model_fields.items() if n != "id"}
        kinds = {n: _unwrap(f.annotation) for n, f in fields.items()}
        base = self.create.__name__
        # Patch: the same types (a null stays refused where the column is NOT NULL);
        # the None default only marks a field as absent, it is never validated or sent.
        patch = create_model(  # type: ignore[call-overload]
            f"{base}Patch",
            __base__=WriteModel,
            **{n: (f.annotation, _with_default(f, None)) for n, f in fields.items()},
        )
        row_fields: dict[str, Any] = {
            "id": (UUID, ...),
            **{n: (f.annotation, _with_default(f, ...)) for n, f in fields.items()},
            "version": (int, ...),
            "created_at": (datetime, ...),
            "updated_at": (datetime, ...),
        }
        read = create_model(f"{base}Row", **row_fields)
        set_ = object.__setattr__  # a frozen dataclass fills its derived fields here
        set_(self, "patch", patch)
        set_(self, "read", read)
        set_(self, "writable", tuple(fields))
        set_(self, "json_columns", frozenset(n for n, (t, _) in kinds.items() if _is_json(t)))
        set_(self, "search_columns", tuple(n for n, (t, _) in kinds.items() if t is str))
        orderable = {n for n, (t, null) in kinds.items() if not null and not _is_json(t)}
        set_(self, "order_columns", frozenset({"id", "version", "created_at", "updated_at"}
                                               | orderable))  # fmt: skip

    def columns_of(self, body: BaseModel) -> dict[str, Any]:
        """The columns a validated body sets (absent fields left out), as query values."""
        values = body.model_dump(exclude_unset=True)
        return {k: Jsonb(v) if k in self.json_columns else v for k, v in values.items()}


def _with_default(info: FieldInfo, default: Any) -> FieldInfo:
    """The field's type and constraints with another default (`...`: required)."""
    copied = copy.copy(info)
    copied.default = PydanticUndefined if default is ... else default
    copied.default_factory = None
    return copied


def _is_json(annotation: Any) -> bool:
    return get_origin(annotation) in (dict, list)


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("branches", Branch),
        Resource("clients", Client),
        Resource("appointments", Appointment),
        Resource("orders", Order),
        Resource("stock_requests", StockRequest),
        Resource("distributors", Distributor),
        Resource("products", Product),
    )
}
