"""A producer and a consuming service on a real nats-server, over a real database: the rig the
messaging tests (test_messaging, test_lanes) share. The conftest makes ``rig`` a fixture."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from paysaga.core.eventing import EventEnvelope, event_subject
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.consumer import EventConsumer, EventHandler, Subscription
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import Database, messaging_tables
from tests.helpers import connect_as

metadata = sa.MetaData()
messaging_tables(metadata)
effects = sa.Table(
    "effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("payment_id", sa.String(36), nullable=False),
)


@dataclass
class Rig:
    """A producer and a consuming service, each connected with its own certificate, so the real
    NATS permissions apply; ops (JetStream administration) inspects streams and consumers."""

    database: Database
    jetstream: JetStreamContext  # the consuming service's
    producer_jetstream: JetStreamContext
    ops: JetStreamContext
    producer: str = "ledger"
    service: str = "payments"

    def consumer(self, handler: EventHandler, lane: str = "standard", **options: Any) -> EventConsumer:
        # Events published without a tier (as before lanes) travel on the standard lane.
        subscription = Subscription(self.producer, ("FundsHeld",), lane)
        return EventConsumer(
            self.service, self.jetstream, self.database, subscription, {"FundsHeld": handler}, **options
        )

    async def dead_letter(self, event_type: str) -> RawStreamMsg:
        return await self.ops.get_last_msg(
            f"{self.service.upper()}_DEAD_LETTERS", f"paysaga.deadletter.{self.service}.{event_type}"
        )

    async def effects(self) -> list[str]:
        async with self.database.read() as connection:
            return [row.payment_id for row in await connection.execute(sa.select(effects.c.payment_id))]

    async def publish(self, envelope: EventEnvelope, message_id: str | None = None) -> None:
        """On the subject of the envelope's tier, as the producer named here (the envelope's own
        producer may differ: a forgery)."""
        await self.producer_jetstream.publish(
            event_subject(self.producer, envelope.event_type, envelope.sla_tier),
            envelope.SerializeToString(),
            headers={"Nats-Msg-Id": message_id or str(uuid.uuid4())},
            timeout=5,
        )


@pytest.fixture
async def rig(nats_cluster: LocalCluster, database_url: str) -> AsyncIterator[Rig]:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    clients = [
        await connect_as(nats_cluster.nats_url, nats_cluster.tls_files(name)) for name in ("payments", "ledger", "ops")
    ]
    consumer, producer, ops = (client.jetstream() for client in clients)
    rig = Rig(Database(engine, metadata), consumer, producer, ops)
    # Each test starts from empty streams and no consumers (ops may administer JetStream).
    for name in ("ledger", "payments"):
        for stream in streams.owned_streams(name):
            with contextlib.suppress(NotFoundError):
                await ops.delete_stream(stream.name)
    for stream in streams.owned_streams(rig.producer):
        await streams.ensure_stream(producer, stream, 1)
    for stream in streams.owned_streams(rig.service):
        await streams.ensure_stream(consumer, stream, 1)
    yield rig
    for client in clients:
        await client.close()
    await engine.dispose()
