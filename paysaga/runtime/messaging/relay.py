"""The outbox relay: publishes committed events to JetStream, then marks them sent.

Each event is published with ``Nats-Msg-Id`` = its event id, and only marked sent after
JetStream acknowledged it (after fsync). If the process dies between the acknowledgement and
the mark, the event is published again on restart and JetStream drops it as a duplicate. So the
marks are not urgent: they are written together, one transaction for everything published in
the last MARK_DELAY_S (or BATCH_SIZE events), and always before the relay reads the table.

Two ways to find what to publish:
- the fast path: each commit of this process hands its outbox rows to the relay in memory, so
  publishing them needs no read of the table (a bounded queue: if it ever overflows, the relay
  falls back to the table);
- the table: at start, after a failure or an overflow, when idle, and at least every
  SCAN_INTERVAL_S under load, the relay reads the unpublished rows, oldest first, and goes on
  reading while it finds full batches (a backlog). That finds
  what the fast path cannot know: events left by a process that died, or committed by another
  replica that shares the database.
An event may be published twice (by both paths, or by two replicas); JetStream drops the second.

A batch of events is published at once and its acknowledgements awaited together (a large one as
one atomic batch: paysaga.runtime.messaging.batches). They are sent
in order on one connection, so they are stored in that order, except when a publish fails (then
later events of the batch may be stored before it is retried) or when a table read finds older
events. Consumers must not rely on order, and do not: a saga's events can also arrive out of
order when a delivery is retried (e.g. a cancel racing the saga's first steps), and every
handler accepts that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence

from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from paysaga.runtime import metrics
from paysaga.runtime.messaging.batches import Outgoing, publish_all
from paysaga.runtime.messaging.streams import StreamSpec, ensure_stream
from paysaga.runtime.messaging.windows import ATOMIC_BATCH_MIN
from paysaga.runtime.storage.unit_of_work import Database, OutboxRow, UnitOfWork
from paysaga.runtime.tasks import sleep_or_stop, wait_any

log = logging.getLogger(__name__)

BATCH_SIZE = 256
IDLE_POLL_S = 1.0
SCAN_INTERVAL_S = 1.0
MARK_DELAY_S = 0.1
PUBLISH_TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0
# Events committed and not yet published that the fast path keeps in memory.
MAX_QUEUED = 10_000


class OutboxRelay:
    def __init__(
        self,
        database: Database,
        jetstream: JetStreamContext,
        streams: Sequence[StreamSpec] = (),
        replicas: int = 1,
        *,
        atomic_batch_min: int = ATOMIC_BATCH_MIN,
    ) -> None:
        self._database = database
        self._atomic_batch_min = atomic_batch_min
        self._jetstream = jetstream
        self._streams = tuple(streams)
        self._replicas = replicas
        self._wake = asyncio.Event()
        self._queued: collections.deque[OutboxRow] = collections.deque()
        self._scan_due = True  # whatever an earlier process left unpublished
        self._scanned_at = time.monotonic()
        self._unmarked: list[str] = []  # published, not yet marked sent
        self._unmarked_since = 0.0
        # When each queued event was committed (monotonic), for the relay lag metric.
        self._committed_at: dict[str, float] = {}
        database.on_commit(self._committed)

    def _committed(self, unit: UnitOfWork) -> None:
        rows = unit.written
        if not rows:
            return
        if not self._scan_due:
            if len(self._queued) + len(rows) > MAX_QUEUED:
                self._queued.clear()
                self._committed_at.clear()
                self._scan_due = True  # the table has them all
            else:
                self._queued.extend(rows)
                now = time.monotonic()
                self._committed_at.update((row.event_id, now) for row in rows)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until stop is set; a last pass after it makes sure nothing committed waits."""
        while not stop.is_set():
            self._wake.clear()  # before reading: a commit meanwhile sets it again
            try:
                published = await self.publish_pending()
            except NoStreamResponseError:
                # Nothing stores our subjects: a NATS cluster electing a stream's new leader, or
                # (alerted when found) a stream deleted, NATS restored empty.
                log.warning("outbox.no_stream_response")
                self._scan_due = True
                await self._recreate_streams()
                await sleep_or_stop(stop, RETRY_DELAY_S)
                continue
            except Exception as error:  # noqa: BLE001 - NATS or the database is down: keep trying
                log.warning("outbox.publish_failed", extra={"error": repr(error)})
                self._scan_due = True
                await sleep_or_stop(stop, RETRY_DELAY_S)
                continue
            if published == 0 and not self._queued:
                await wait_any([stop, self._wake], MARK_DELAY_S if self._unmarked else IDLE_POLL_S)
                if not self._wake.is_set() and not self._unmarked:
                    self._scan_due = True  # idle: look at the table once in a while
        with contextlib.suppress(Exception):
            while True:
                self._scan_due = True  # the table has everything committed
                if await self.publish_pending() < BATCH_SIZE:
                    break
        with contextlib.suppress(Exception):
            await self.flush_marks()  # what was published, even if the last pass failed

    async def _recreate_streams(self) -> None:
        for stream in self._streams:
            try:
                if await ensure_stream(self._jetstream, stream, self._replicas) == "created":
                    log.error("outbox.stream_missing", extra={"stream": stream.name, "alert": True})
            except Exception as error:  # noqa: BLE001 - tried again on the next failed publish
                log.warning("outbox.stream_recreate_failed", extra={"stream": stream.name, "error": repr(error)})

    async def publish_pending(self) -> int:
        """Publish one batch: read from the table when a read is due (see the module's docstring),
        else what commits have queued; returns how many were published."""
        now = time.monotonic()
        if self._unmarked and now - self._unmarked_since >= MARK_DELAY_S:
            await self.flush_marks()
        if self._scan_due or now - self._scanned_at >= SCAN_INTERVAL_S:
            rows = await self._read_table()
        else:
            rows = [self._queued.popleft() for _ in range(min(BATCH_SIZE, len(self._queued)))]
        if not rows:
            return 0
        return await self._publish(rows)

    async def flush_marks(self) -> None:
        """Mark sent what was published; kept for the next try if the database refuses."""
        if not self._unmarked:
            return
        async with self._database.transaction() as unit:
            await unit.connection.execute(
                self._database.statements.mark_published,
                {"event_ids": self._unmarked, "published_at": self._database.clock()},
            )
        self._unmarked = []

    async def _read_table(self) -> list[OutboxRow]:
        await self.flush_marks()  # else the read would find them unpublished and publish them again
        self._scanned_at = time.monotonic()
        statements = self._database.statements
        async with self._database.read() as connection:
            found = (await connection.execute(statements.unpublished, {"limit": BATCH_SIZE})).all()
        if found and not await self._database.backend.replicated(self._database.engine):
            # A commit can be on this database before its synchronous standby has it (its wait
            # given up, the server restarted): what was read waits until the standby has all it
            # saw, so that a failover to the standby never leaves an event whose origin is gone.
            log.warning("outbox.waiting_for_standby")
            self._scan_due = True
            return []
        # A full batch means a backlog (after an outage, say): read on until it is cleared.
        self._scan_due = len(found) == BATCH_SIZE
        rows = [OutboxRow(*row) for row in found]
        if rows and self._queued:
            # Published now: not again from memory.
            read = {row.event_id for row in rows}
            self._queued = collections.deque(row for row in self._queued if row.event_id not in read)
        return rows

    async def _publish(self, rows: list[OutboxRow]) -> int:
        # All of the batch at once: single publishes in flight together, their acknowledgements
        # awaited together, or for a large batch one atomic batch (one JetStream fsync for all).
        outgoing = [Outgoing(row.subject, row.payload, row.event_id) for row in rows]
        results = await publish_all(
            self._jetstream, outgoing, PUBLISH_TIMEOUT_S, atomic_batch_min=self._atomic_batch_min
        )
        sent = [row.event_id for row, result in zip(rows, results, strict=True) if result is None]
        acknowledged_at = time.monotonic()
        for row, result in zip(rows, results, strict=True):
            committed_at = self._committed_at.pop(row.event_id, None)
            if result is not None:
                continue
            metrics.EVENTS_PUBLISHED.labels(row.subject.rpartition(".")[2]).inc()
            if committed_at is not None:
                metrics.RELAY_LAG_SECONDS.observe(acknowledged_at - committed_at)
        if sent and not self._unmarked:
            self._unmarked_since = time.monotonic()
        self._unmarked += sent
        if len(self._unmarked) >= BATCH_SIZE:
            await self.flush_marks()
        for result in results:
            if result is not None:
                raise result  # the failed ones stay unpublished in the table: the next read finds them
        return len(sent)
