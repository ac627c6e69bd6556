"""Resources: a table plus a pydantic model, declared by an app (docs/design.md, "Apps").

A resource's *create* model lists the columns a client may write, with the
table's types, CHECK constraints and defaults; the *patch* model (every field
optional) and the *read* model (the row as stored, with the server-set columns)
are derived from it, so one class per resource drives every route. The models
are strict (no `"5"` for an integer, no `true` for a number) and forbid unknown
fields (`WriteModel`).

What differs between tables is declared per resource, never assumed:

- `key`: the one-column primary key (uuid, integer or text); composite keys are
  refused at declaration;
- `version`: an integer column the table raises on every write (ETag `"<version>"`);
  without one, the ETag is a hash of the row image, equally strong;
- `tenant`: the column a branch-pinned token is confined to (its pin compared as
  that column's type); without one, pinned tokens may not write the resource; the
  key itself for the table of branches (a pinned token reads its own row, writes none);
- `server_set`: columns the table fills itself (timestamps, counters), read-only.
"""

from __future__ import annotations

import copy
import re
import types
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Union, get_args, get_origin
from uuid import UUID

from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

INT_MAX = 2**31 - 1  # PostgreSQL `integer`
BIGINT_MAX = 2**63 - 1
MAX_TEXT_KEY = 1000  # characters of a text key in a path
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


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


class DeclarationError(ValueError):
    """A resource or app is declared wrongly (raised when the app is loaded)."""


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


_KEY_TYPES = (UUID, int, str)
_SERVER_SET_TYPES: dict[str, Any] = {"created_at": datetime, "updated_at": datetime}


@dataclass(frozen=True)
class Resource:
    """One resource: its URL name, its table and model, and what they imply.

    `table` is `schema.table` or a bare name in `public` (default: the URL name).
    `key_type` is needed only when the key column is not a field of the model
    (a `bigserial` the client never sets); otherwise the field's type is the key's.
    """

    name: str
    create: type[WriteModel]
    table: str | None = None
    key: str = "id"
    key_type: type | None = None
    version: str | None = None
    tenant: str | None = None
    server_set: tuple[str, ...] = ()
    # Derived in __post_init__.
    schema_name: str = field(init=False)
    table_name: str = field(init=False)
    key_kind: type = field(init=False)
    tenant_kind: type = field(init=False)
    patch: type[BaseModel] = field(init=False)
    read: type[BaseModel] = field(init=False)
    writable: tuple[str, ...] = field(init=False)  # columns a body may set, besides the key
    json_columns: frozenset[str] = field(init=False)  # jsonb: values go as Jsonb
    search_columns: tuple[str, ...] = field(init=False)  # text columns `search=` scans
    order_columns: frozenset[str] = field(init=False)  # NOT NULL scalars `order=` accepts
    # Write statements composed for this resource, by shape (api/writes.py): they live and
    # die with the resource, so no other resource's statement can ever be served.
    statements: dict[tuple[Any, ...], bytes] = field(
        init=False, default_factory=dict, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise DeclarationError(
                f"resource name {self.name!r}: lower-case letters, digits and _ (a URL segment)"
            )
        if not isinstance(self.key, str):
            raise DeclarationError(
                f"resource {self.name}: composite keys are not supported; declare a resource "
                "on a table with a one-column primary key (docs/design.md, Apps)"
            )
        schema, _, table = (self.table or self.name).rpartition(".")
        fields = {n: f for n, f in self.create.model_fields.items() if n != self.key}
        kinds = {n: _unwrap(f.annotation) for n, f in fields.items()}
        key_field = self.create.model_fields.get(self.key)
        key_kind = _unwrap(key_field.annotation)[0] if key_field else self.key_type
        if key_kind not in _KEY_TYPES:
            raise DeclarationError(
                f"resource {self.name}: the key {self.key!r} must be a uuid, integer or text "
                "field of the model, or be given as key_type=UUID|int|str"
            )
        for column in (self.version, *self.server_set):
            if column is not None and column in fields:
                raise DeclarationError(
                    f"resource {self.name}: {column!r} is set by the server; remove it from "
                    "the model"
                )
        tenant_kind: type = str
        if self.tenant is not None and self.tenant == self.key:
            tenant_kind = key_kind  # the table of branches: a branch's tenant is its key
        elif self.tenant is not None:
            if self.tenant not in fields:
                raise DeclarationError(
                    f"resource {self.name}: the tenant column {self.tenant!r} must be a field"
                )
            tenant_kind = _unwrap(fields[self.tenant].annotation)[0]
            if tenant_kind not in _KEY_TYPES:
                raise DeclarationError(
                    f"resource {self.name}: the tenant {self.tenant!r} must be uuid, int or str"
                )
        base = self.create.__name__
        # Patch: the same types (a null stays refused where the column is NOT NULL);
        # the None default only marks a field as absent, it is never validated or sent.
        patch = create_model(  # type: ignore[call-overload]
            f"{base}Patch",
            __base__=WriteModel,
            **{n: (f.annotation, _with_default(f, None)) for n, f in fields.items()},
        )
        row_fields: dict[str, Any] = {
            self.key: (key_kind, ...),
            **{n: (f.annotation, _with_default(f, ...)) for n, f in fields.items()},
        }
        if self.version is not None:
            row_fields[self.version] = (int, ...)
        for column in self.server_set:
            row_fields.setdefault(column, (_SERVER_SET_TYPES.get(column, Any), ...))
        read = create_model(f"{base}Row", **row_fields)
        orderable = {n for n, (t, null) in kinds.items() if not null and not _is_json(t)}
        set_ = object.__setattr__  # a frozen dataclass fills its derived fields here
        set_(self, "schema_name", schema or "public")
        set_(self, "table_name", table)
        set_(self, "key_kind", key_kind)
        set_(self, "tenant_kind", tenant_kind)
        set_(self, "patch", patch)
        set_(self, "read", read)
        set_(self, "writable", tuple(fields))
        set_(self, "json_columns", frozenset(n for n, (t, _) in kinds.items() if _is_json(t)))
        set_(self, "search_columns", tuple(n for n, (t, _) in kinds.items() if t is str))
        server = {c for c in (self.version, *self.server_set) if c is not None}
        set_(self, "order_columns", frozenset({self.key} | server | orderable))

    @property
    def identifier(self) -> sql.Identifier:
        """The table, schema-qualified, for composed statements."""
        return sql.Identifier(self.schema_name, self.table_name)

    @property
    def qualified(self) -> str:
        """`schema.table`, as the catalog and the stream name it."""
        return f"{self.schema_name}.{self.table_name}"

    def parse_key(self, raw: str) -> Any:
        """A key from a URL path, as the key column's type; ValueError if it cannot be one."""
        if self.key_kind is UUID:
            return UUID(raw)
        if self.key_kind is int:
            if not re.fullmatch(r"-?[0-9]{1,19}", raw) or abs(int(raw)) > BIGINT_MAX:
                raise ValueError(raw)
            return int(raw)
        if "\x00" in raw or len(raw) > MAX_TEXT_KEY:
            raise ValueError(raw)
        return raw

    def parse_tenant(self, raw: str) -> Any:
        """A token's branch pin as the tenant column's type; ValueError if it cannot be one."""
        if self.tenant_kind is UUID:
            return UUID(raw)
        if self.tenant_kind is int:
            return int(raw)
        return raw

    def etag_sql(self) -> sql.Composable:
        """The row's ETag (unquoted) as SQL over alias `t`: its version, or a hash of its image."""
        if self.version is not None:
            return sql.SQL("{}::text").format(sql.Identifier("t", self.version))
        # jsonb's text is canonical (keys sorted, one spelling per value): equal rows,
        # equal tags. "h" keeps the tag apart from any version number.
        return sql.SQL("'h' || md5(to_jsonb(t)::text)")

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
    return get_origin(annotation) in (dict, list) or annotation in (dict, list)
