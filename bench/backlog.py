"""The outbox relay catching up on a backlog, as a raw limit: events per second it publishes from
a full outbox (after NATS was unreachable for a while, say), one by one or as atomic batches; its
latency is that of one relay batch (a read of the outbox, published and acknowledged).

The relay reads the outbox 256 rows at a time; each read is published whole, one message at a time
(all in flight) or as one atomic batch (paysaga.runtime.messaging.batches), then marked sent. The
nats-server is the raw limits' own (bench.limits.nats_server), the database a SQLite file.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from bench import limits
from bench.stats import Latency
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.relay import OutboxRelay
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import Database, messaging_tables

NAME = "outbox relay, backlog"
PRODUCER = "ledger"
EVENTS_PER_TRANSACTION = 500


async def relay_backlog(certs_dir: Path, work_dir: Path, *, events: int, atomic_batch_min: int) -> limits.RawLimit:
    """Events per second the relay publishes from an outbox holding events (timed from its first
    read to its last mark)."""
    metadata = sa.MetaData()
    messaging_tables(metadata)
    engine = create_engine(f"sqlite+aiosqlite:///{work_dir / 'outbox.db'}")
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        database = Database(engine, metadata, producer=PRODUCER)
        await _fill(database, events)
        async with limits.nats_server(certs_dir, work_dir) as server:
            client = await limits.connect(server, certs_dir, name="bench-backlog")
            try:
                jetstream = client.jetstream()
                owned = streams.owned_streams(PRODUCER)
                for spec in owned:
                    await streams.ensure_stream(jetstream, spec, replicas=1)
                relay = OutboxRelay(database, jetstream, owned, atomic_batch_min=atomic_batch_min)
                started_s = time.perf_counter()
                published = 0
                batches_s: list[float] = []  # each read's publishing, acks awaited (one relay batch)
                while published < events:
                    batch_started_s = time.perf_counter()
                    published += await relay.publish_pending()
                    batches_s.append(time.perf_counter() - batch_started_s)
                await relay.flush_marks()
                elapsed_s = time.perf_counter() - started_s
            finally:
                await client.close()
    finally:
        await engine.dispose()
        shutil.rmtree(work_dir, ignore_errors=True)
    name = f"{NAME}, " + (f"atomic batches of {atomic_batch_min}+" if atomic_batch_min else "single publishes")
    return limits.RawLimit(name, 1, published, elapsed_s, Latency.of(batches_s))


async def _fill(database: Database, events: int) -> None:
    for start in range(0, events, EVENTS_PER_TRANSACTION):
        async with database.transaction() as unit:
            for _ in range(min(EVENTS_PER_TRANSACTION, events - start)):
                payment_id = str(uuid.uuid4())
                unit.emit(events_pb2.FundsReleased(payment_id=payment_id, reason="backlog"), saga_id=payment_id)
