"""The outbox relay: publishes committed events to JetStream, oldest first, then marks them sent.

Each event is published with ``Nats-Msg-Id`` = its event id, and only marked sent after
JetStream acknowledged it (after fsync). If the process dies between the acknowledgement and
the mark, the event is published again on restart and JetStream drops it as a duplicate.

A batch of events is published at once and its acknowledgements awaited together. They are sent
in outbox order on one connection, so they are stored in that order, except when a publish fails:
then later events of the batch may be stored before it is retried. Consumers must not rely on
order, and do not: a saga's events can also arrive out of order when a delivery is retried (e.g.
a cancel racing the saga's first steps), and every handler accepts that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from paysaga.eventing import EventEnvelope
from paysaga.messaging import StreamSpec, ensure_stream
from paysaga.tasks import sleep_or_stop, wait_any
from paysaga.unit_of_work import Database, utc_now

log = logging.getLogger(__name__)

BATCH_SIZE = 256
IDLE_POLL_S = 1.0
PUBLISH_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0


class OutboxRelay:
    def __init__(
        self, database: Database, jetstream: JetStreamContext, streams: Sequence[StreamSpec] = (), replicas: int = 1
    ) -> None:
        self._database = database
        self._jetstream = jetstream
        self._streams = tuple(streams)
        self._replicas = replicas
        self._wake = asyncio.Event()
        database.on_commit(self._on_commit)

    def _on_commit(self, emitted: list[EventEnvelope]) -> None:
        if emitted:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until stop is set; a last pass after it makes sure nothing committed waits."""
        while not stop.is_set():
            self._wake.clear()  # before reading: a commit during the read sets it again
            try:
                published = await self.publish_pending()
            except NoStreamResponseError:
                # Nothing stores our subjects any more (a stream deleted, NATS restored empty).
                log.error("outbox.stream_missing", extra={"alert": True})
                await self._recreate_streams()
                await sleep_or_stop(stop, RETRY_DELAY_S)
                continue
            except Exception as error:  # noqa: BLE001 - NATS or the database is down: keep trying
                log.warning("outbox.publish_failed", extra={"error": repr(error)})
                await sleep_or_stop(stop, RETRY_DELAY_S)
                continue
            if published < BATCH_SIZE:
                await wait_any([stop, self._wake], IDLE_POLL_S)
        with contextlib.suppress(Exception):
            while await self.publish_pending() == BATCH_SIZE:
                pass

    async def _recreate_streams(self) -> None:
        for stream in self._streams:
            try:
                await ensure_stream(self._jetstream, stream, self._replicas)
            except Exception as error:  # noqa: BLE001 - tried again on the next failed publish
                log.warning("outbox.stream_recreate_failed", extra={"stream": stream.name, "error": repr(error)})

    async def publish_pending(self) -> int:
        statements = self._database.statements
        async with self._database.read() as connection:
            rows = (await connection.execute(statements.unpublished, {"limit": BATCH_SIZE})).all()
        if not rows:
            return 0
        # All of the batch in flight at once, the acknowledgements awaited together: one round trip
        # and one JetStream fsync for many events instead of one each.
        results = await asyncio.gather(
            *(
                self._jetstream.publish(
                    row.subject, row.payload, headers={"Nats-Msg-Id": row.event_id}, timeout=PUBLISH_TIMEOUT_S
                )
                for row in rows
            ),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled: not a failed publish
        sent = [row.id for row, result in zip(rows, results, strict=True) if not isinstance(result, Exception)]
        if sent:
            async with self._database.transaction() as unit:
                await unit.connection.execute(statements.mark_published, {"ids": sent, "published_at": utc_now()})
        for result in results:
            if isinstance(result, Exception):
                raise result
        return len(sent)
