"""pgtide_client: follow a pgtide server's changes, keep a replica, write, and queue offline.

    from pgtide_client import Client, Replica

    with Client("http://127.0.0.1:8000", token) as pg, Replica("orders.db") as replica:
        for event in pg.subscribe(tables=["orders"], snapshot=True, replica=replica):
            ...

Depends only on httpx and httpx-sse. The wire contract is pgtide's
docs/design.md; the choices this client makes are in docs/client.md.
"""

from pgtide_client.client import AsyncClient, Client, Following
from pgtide_client.errors import (
    Conflict,
    HTTPError,
    Invalid,
    NotFound,
    OutboxError,
    PgtideClientError,
    PreconditionFailed,
    TxidTimeout,
    Unavailable,
)
from pgtide_client.events import (
    Change,
    Event,
    Reconnecting,
    Reset,
    SnapshotStarted,
    StreamError,
    Synced,
)
from pgtide_client.http import Fetched, Written
from pgtide_client.outbox import AsyncOutbox, Flushed, Outbox, Record
from pgtide_client.replica import Replica
from pgtide_client.subscribe import asubscribe, subscribe
from pgtide_client.txids import TxidWatch

__all__ = [
    "AsyncClient",
    "AsyncOutbox",
    "Change",
    "Client",
    "Conflict",
    "Event",
    "Fetched",
    "Flushed",
    "Following",
    "HTTPError",
    "Invalid",
    "NotFound",
    "Outbox",
    "OutboxError",
    "PgtideClientError",
    "PreconditionFailed",
    "Reconnecting",
    "Record",
    "Replica",
    "Reset",
    "SnapshotStarted",
    "StreamError",
    "Synced",
    "TxidTimeout",
    "TxidWatch",
    "Unavailable",
    "Written",
    "asubscribe",
    "subscribe",
]
