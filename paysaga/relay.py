"""The outbox relay: publishes committed events to JetStream, oldest first, then marks them sent.

Each event is published with ``Nats-Msg-Id`` = its event id, and only marked sent after
JetStream acknowledged it (after fsync). If the process dies between the acknowledgement and
the mark, the event is published again on restart and JetStream drops it as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import sqlalchemy as sa
from nats.js import JetStreamContext

from paysaga.eventing import EventEnvelope
from paysaga.tasks import sleep_or_stop, wait_any
from paysaga.unit_of_work import Database, utc_now

log = logging.getLogger(__name__)

BATCH_SIZE = 100
IDLE_POLL_S = 1.0
PUBLISH_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0


class OutboxRelay:
    def __init__(self, database: Database, jetstream: JetStreamContext) -> None:
        self._database = database
        self._jetstream = jetstream
        self._wake = asyncio.Event()
        database.on_commit(self._on_commit)

    def _on_commit(self, emitted: list[EventEnvelope]) -> None:
        if emitted:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until stop is set; a last pass after it makes sure nothing committed waits."""
        while not stop.is_set():
            try:
                published = await self.publish_pending()
            except Exception as error:  # noqa: BLE001 - NATS or the database is down: keep trying
                log.warning("outbox.publish_failed", extra={"error": repr(error)})
                await sleep_or_stop(stop, RETRY_DELAY_S)
                continue
            if published < BATCH_SIZE:
                self._wake.clear()
                await wait_any([stop, self._wake], IDLE_POLL_S)
        with contextlib.suppress(Exception):
            while await self.publish_pending() == BATCH_SIZE:
                pass

    async def publish_pending(self) -> int:
        outbox = self._database.outbox
        async with self._database.read() as connection:
            rows = (
                await connection.execute(
                    sa.select(outbox.c.id, outbox.c.event_id, outbox.c.subject, outbox.c.payload)
                    .where(outbox.c.published_at.is_(None))
                    .order_by(outbox.c.id)
                    .limit(BATCH_SIZE)
                )
            ).all()
        if not rows:
            return 0
        sent: list[int] = []
        try:
            for row in rows:
                await self._jetstream.publish(
                    row.subject, row.payload, headers={"Nats-Msg-Id": row.event_id}, timeout=PUBLISH_TIMEOUT_S
                )
                sent.append(row.id)
        finally:
            if sent:
                async with self._database.transaction() as unit:
                    await unit.connection.execute(
                        outbox.update().where(outbox.c.id.in_(sent)).values(published_at=utc_now())
                    )
        return len(sent)
