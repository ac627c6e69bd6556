"""Resources and apps are checked when they are declared: no database."""

from __future__ import annotations

from uuid import UUID

import pytest
from pydantic import BaseModel

from api.apps import App, Registry, load_app
from api.models import DeclarationError, Resource, WriteModel
from cdc.errors import ConfigError


class Thing(WriteModel):
    code: str
    shop_id: int


class Keyed(WriteModel):
    id: UUID | None = None
    name: str


def test_a_resource_on_a_bigserial_table_without_version_or_tenant() -> None:
    res = Resource("things", Thing, table="inventory.things", key="id", key_type=int)
    assert (res.schema_name, res.table_name, res.qualified) == ("inventory", "things",
                                                                 "inventory.things")  # fmt: skip
    assert res.key_kind is int and res.version is None and res.tenant is None
    assert res.parse_key("42") == 42
    for bad in ("4.2", "x", "99999999999999999999", "", "1\x00"):
        with pytest.raises(ValueError):
            res.parse_key(bad)
    assert "md5" in res.etag_sql().as_string(None)
    assert set(res.read.model_fields) == {"id", "code", "shop_id"}
    assert res.writable == ("code", "shop_id")


def test_key_and_tenant_types_come_from_the_model() -> None:
    res = Resource("keyed", Keyed, version="version", server_set=("created_at",))
    assert res.key_kind is UUID and res.parse_key("6F9619FF-8B86-D011-B42D-00C04FC964FF")
    assert "version" in res.etag_sql().as_string(None)
    tenanted = Resource("things", Thing, key_type=str, tenant="shop_id")
    assert tenanted.parse_tenant("7") == 7
    with pytest.raises(ValueError):
        tenanted.parse_tenant("seven")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key": ("a", "b")}, "composite keys are not supported"),
        ({"key": "code", "key_type": None}, "uuid, integer or text"),
        ({"key": "nope"}, "must be a uuid, integer or text"),
        ({"key_type": int, "version": "code"}, "set by the server"),
        ({"key_type": int, "tenant": "branch_id"}, "tenant column 'branch_id' must be a field"),
        ({"key_type": int, "server_set": ("shop_id",)}, "set by the server"),
    ],
)
def test_wrong_declarations_are_refused_with_a_reason(
    kwargs: dict[str, object], message: str
) -> None:
    class Coded(WriteModel):
        code: float
        shop_id: int

    with pytest.raises(DeclarationError, match=message):
        Resource("things", Coded, **kwargs)  # type: ignore[arg-type]


def test_names_must_be_url_segments() -> None:
    with pytest.raises(DeclarationError):
        Resource("Things!", Thing, key_type=int)
    with pytest.raises(DeclarationError):
        App(name="My App")


def test_two_apps_may_not_serve_one_resource_name() -> None:
    a = App(name="a", resources=[Resource("things", Thing, key_type=int)])
    b = App(name="b", resources=[Resource("things", Thing, key_type=int)])
    with pytest.raises(ConfigError, match="two apps"):
        Registry([a, b])


def test_apps_are_found_by_shipped_name_or_module_attr() -> None:
    shipped = load_app("dynapharm")
    assert shipped.name == "dynapharm" and len(shipped.resources) == 7
    assert shipped.tables[0] == "public.branches"
    assert load_app("apps.dynapharm:app").name == "dynapharm"
    for bad, message in [("nope", "no app named"), ("no_such_module:app", "cannot import"),
                         ("api.models:Resource", "is not a pgtide App")]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_app(bad)


def test_the_shipped_models_are_strict() -> None:
    client = load_app("dynapharm").resources[1]
    assert issubclass(client.create, BaseModel)
    with pytest.raises(ValueError):
        client.create.model_validate({"branch_id": "x", "full_name": "A", "unknown": 1})
