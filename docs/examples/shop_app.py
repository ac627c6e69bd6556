"""A pgtide app for a table that already exists:

    CREATE TABLE shipments (id bigserial PRIMARY KEY, reference text NOT NULL UNIQUE,
                            weight_kg numeric(8, 2), delivered boolean NOT NULL DEFAULT false);

`pgtide migrate --app shop_app:app` tracks it and records the app; `pgtide serve`
then serves /api/shipments (list, get, create, replace, patch, delete, CSV import).
"""

from typing import Annotated

from pydantic import Field

from api.apps import App
from api.models import Resource, Text, WriteModel


class Shipment(WriteModel):
    """The columns a client writes (the table sets `id`)."""

    reference: Annotated[Text, Field(min_length=1, max_length=64)]
    weight_kg: Annotated[float, Field(ge=0, lt=1_000_000)] | None = None
    delivered: bool = False


app = App(
    name="shop",
    resources=[Resource("shipments", Shipment, key="id", key_type=int)],
)
