"""Durable JetStream consumers that hand each event to its handler exactly once in effect.

For every message: decode the envelope; in one transaction, skip it if its id is in the inbox,
else run the handler (which changes state and emits events into the outbox) and record the id;
commit; only then ack. So a crash anywhere means a redelivery, and a redelivery means no second
effect. On SQLite the messages of one fetch share that transaction (one commit, one fsync for all
of them: a group commit); if any of them fails, the batch is rolled back and each message is handled in a
transaction of its own, so a failure only ever concerns its own message.

Failures:
- the database or NATS is unavailable (an operating error): ``nak`` with a growing delay, for as
  long as it takes; nothing is parked for an outage;
- the handler raises anything else (a bug, data it cannot accept): retried with backoff until it
  has failed MAX_ATTEMPTS times, then parked in the service's dead-letter stream with the reason and an
  error log line (the alert);
- the message cannot even be decoded: parked at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from paysaga.core import eventing
from paysaga.core.eventing import DEAD_LETTER_SUBJECT_ROOT, EventEnvelope
from paysaga.runtime.logs import log_context
from paysaga.runtime.storage.database import is_retryable, is_unavailable
from paysaga.runtime.storage.unit_of_work import Database, UnitOfWork
from paysaga.runtime.tasks import sleep_or_stop

log = logging.getLogger(__name__)

EventHandler = Callable[[UnitOfWork, EventEnvelope], Awaitable[None]]

# Messages handled per transaction: one commit (one fsync) for all of them, so it bounds both the
# transaction's length (others wait for SQLite's single writer meanwhile) and the redone work
# when a batch must be split.
FETCH_BATCH = 64
FETCH_TIMEOUT_S = 1.0
# How long a delivered message may stay unacknowledged before JetStream delivers it again. It is
# the time a crashed consumer's in-flight messages wait before another process (or the restarted
# one) gets them, so it is kept short; a batch is handled in milliseconds.
ACK_WAIT_S = 10.0
MAX_ATTEMPTS = 8
RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
SUBSCRIBE_RETRY_S = 1.0
RESUBSCRIBE_AFTER_FAILURES = 3
MAX_TRACKED_FAILURES = 10_000
# Transaction conflicts retried before they count as a handler failure: under load they are
# normal, but one that repeats this often is not a race any more.
MAX_CONFLICT_RETRIES = 50


def is_operating_error(error: BaseException) -> bool:
    """The database or NATS is unavailable: retry for as long as it takes, never park."""
    return isinstance(error, nats.errors.Error | TimeoutError) or is_unavailable(error)


def consumer_config(durable: str, filter_subjects: list[str]) -> ConsumerConfig:
    """A durable pull consumer that delivers every event of its subjects until it is acked."""
    return ConsumerConfig(
        durable_name=durable,
        name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=-1,  # we count attempts ourselves and park the message; the server must never drop it
        filter_subjects=filter_subjects,
    )


@dataclass(frozen=True)
class Subscription:
    """The events of one producer that a service reacts to."""

    producer: str
    event_types: tuple[str, ...]

    @property
    def stream(self) -> str:
        return f"{self.producer.upper()}_EVENTS"

    def durable_name(self, consumer: str) -> str:
        return f"{consumer}-from-{self.producer}"

    def filter_subjects(self) -> list[str]:
        return [eventing.event_subject(self.producer, event_type) for event_type in self.event_types]


async def apply_events(
    database: Database, handlers: Mapping[str, EventHandler], envelopes: Sequence[EventEnvelope]
) -> int:
    """Every new event handled in one transaction, in order, and recorded in the inbox with its
    effects; duplicates (already in the inbox, or twice in the list) skipped. Returns how many were
    new. What a consumer does with each fetch, and what the saga simulator does with each delivery."""
    async with database.transaction() as unit:
        seen = await unit.processed_among([envelope.event_id for envelope in envelopes])
        handled = []
        for envelope in envelopes:
            if envelope.event_id in seen:
                continue
            seen.add(envelope.event_id)
            with log_context(saga_id=envelope.saga_id, event_id=envelope.event_id, event_type=envelope.event_type):
                await handlers[envelope.event_type](unit, envelope)
            handled.append(envelope)
        if handled:
            await unit.record_all_processed(handled)
    return len(handled)


def subscriptions_for(handlers: Mapping[str, EventHandler]) -> tuple[Subscription, ...]:
    """What a service must consume to feed its handlers: one subscription per producer, for the
    event types it handles (the one place that says which events a service reacts to)."""
    by_producer: dict[str, list[str]] = {}
    for event_type in handlers:
        by_producer.setdefault(eventing.PRODUCER_OF[event_type], []).append(event_type)
    return tuple(Subscription(producer, tuple(types)) for producer, types in sorted(by_producer.items()))


class EventConsumer:
    def __init__(
        self,
        service: str,
        jetstream: JetStreamContext,
        database: Database,
        subscription: Subscription,
        handlers: Mapping[str, EventHandler],
        *,
        max_attempts: int = MAX_ATTEMPTS,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        missing = set(subscription.event_types) - set(handlers)
        if missing:
            raise ValueError(f"{service} subscribes to {sorted(missing)} without a handler")
        self._service = service
        self.name = subscription.durable_name(service)
        self._jetstream = jetstream
        self._database = database
        self._subscription = subscription
        self._handlers = handlers
        self._max_attempts = max_attempts
        self._retry_delays_s = tuple(retry_delays_s)
        self._failures: dict[int, int] = {}  # stream sequence -> handler failures so far
        self._conflicts: dict[int, int] = {}  # stream sequence -> transaction conflicts so far
        # Group commit on SQLite only: there writers take turns anyway. On PostgreSQL a batch would
        # hold the row locks of many handlers, taken in no common order, until its one commit:
        # replicas would wait on each other and could deadlock.
        self._batching = database.single_writer

    def retry_delay_s(self, attempt: int) -> float:
        return self._retry_delays_s[min(attempt, len(self._retry_delays_s)) - 1]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            subscription = await self._subscribe(stop)
            if subscription is None:
                return
            try:
                await self._consume(subscription, stop)
            finally:
                # A pull subscription left open holds the server's late replies, and a NATS drain
                # would wait for them until its timeout.
                with contextlib.suppress(nats.errors.Error):
                    await subscription.unsubscribe()

    async def _consume(self, subscription: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        """Fetch and handle until stop, or until fetching keeps failing (e.g. the durable consumer
        was deleted): then the caller subscribes again, which recreates it."""
        failures = 0
        while not stop.is_set():
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:
                failures = 0
                continue
            except nats.errors.Error as error:
                failures += 1
                stream = self._subscription.stream
                log.warning(
                    "consumer.fetch_failed", extra={"stream": stream, "error": repr(error), "failures": failures}
                )
                if failures >= RESUBSCRIBE_AFTER_FAILURES:
                    return
                await sleep_or_stop(stop, SUBSCRIBE_RETRY_S)
                continue
            failures = 0
            await self.handle_batch(messages)

    async def _subscribe(self, stop: asyncio.Event) -> JetStreamContext.PullSubscription | None:
        """Create (or find) the durable consumer; waits for the producer's stream to exist."""
        durable = self._subscription.durable_name(self._service)
        config = consumer_config(durable, self._subscription.filter_subjects())
        while not stop.is_set():
            try:
                await self._jetstream.add_consumer(self._subscription.stream, config)
                return await self._jetstream.pull_subscribe_bind(durable=durable, stream=self._subscription.stream)
            except NotFoundError:
                log.info("consumer.waiting_for_stream", extra={"stream": self._subscription.stream})
            except (nats.errors.Error, TimeoutError) as error:
                log.warning(
                    "consumer.subscribe_failed", extra={"stream": self._subscription.stream, "error": repr(error)}
                )
            await sleep_or_stop(stop, SUBSCRIBE_RETRY_S)
        return None

    async def handle_batch(self, messages: Sequence[Msg]) -> None:
        """Handle fetched messages in one transaction and one commit (one fsync), then ack them all.
        If anything in the batch fails, nothing of it is kept and each message is handled on its own,
        so a failure is retried, counted or parked for its own message only."""
        decoded = [(message, envelope) for message in messages if (envelope := await self._decode(message))]
        if (
            self._batching
            and len(decoded) > 1
            and not any(message.metadata.sequence.stream in self._failures for message, _ in decoded)
        ):
            try:
                await self._apply_batch([envelope for _, envelope in decoded])
            except Exception as error:  # noqa: BLE001 - each message gets its own verdict below
                if is_operating_error(error):
                    # The database or NATS is down: one by one, each would wait for it in turn.
                    log.warning("event.retry_later", extra={"messages": len(decoded), "error": repr(error)})
                    for message, _ in decoded:
                        await message.nak(delay=self.retry_delay_s(message.metadata.num_delivered))
                    return
                log.info("consumer.batch_split", extra={"messages": len(decoded), "error": repr(error)})
            else:
                for message, _ in decoded:
                    self._conflicts.pop(message.metadata.sequence.stream, None)
                    await message.ack()
                return
        for message, envelope in decoded:
            await self._handle_decoded(message, envelope)

    async def _decode(self, message: Msg) -> EventEnvelope | None:
        """The message's event, or None when it can never be handled (then it is parked)."""
        try:
            envelope = eventing.parse(message.data)
        except ValueError as error:
            await self._park_or_retry(message, None, f"undecodable event: {error}")
            return None
        if envelope.producer != self._subscription.producer or message.subject != eventing.subject_of(envelope):
            reason = (
                f"event claims producer {envelope.producer!r} and type {envelope.event_type!r} "
                f"but came on {message.subject}"
            )
            await self._park_or_retry(message, envelope, reason)
            return None
        return envelope

    async def _handle_decoded(self, message: Msg, envelope: EventEnvelope) -> None:
        attempt = message.metadata.num_delivered
        sequence = message.metadata.sequence.stream
        with log_context(saga_id=envelope.saga_id, event_id=envelope.event_id, event_type=envelope.event_type):
            try:
                applied = await self._apply(envelope)
            except Exception as error:  # noqa: BLE001 - sorted below: operating errors, conflicts, the rest
                conflict = is_retryable(error) and self._count_conflict(sequence) <= MAX_CONFLICT_RETRIES
                if is_operating_error(error) or conflict:
                    # The database or NATS is unavailable, or the transaction conflicted with a
                    # concurrent one: not the handler's fault, so it does not count.
                    log.warning("event.retry_later", extra={"delivery": attempt, "error": repr(error)})
                    await message.nak(delay=self.retry_delay_s(attempt))
                    return
                # Only the handler's own failures count towards parking: deliveries during an
                # outage or after an ack timeout do not. Kept in memory, so a restart only ever
                # gives an event more attempts, never fewer.
                await self._handler_failed(message, envelope, sequence, error)
                return
            self._failures.pop(sequence, None)
            self._conflicts.pop(sequence, None)
            await message.ack()
            log.debug("event.handled" if applied else "event.duplicate_skipped")

    async def _handler_failed(self, message: Msg, envelope: EventEnvelope, sequence: int, error: Exception) -> None:
        failures = self._failures.pop(sequence, 0) + 1
        if failures >= self._max_attempts:
            await self._park_or_retry(message, envelope, f"handler failed {failures} times: {error!r}")
            return
        self._remember_failure(sequence, failures)
        log.warning("event.handler_failed", extra={"failures": failures, "error": repr(error)}, exc_info=True)
        await message.nak(delay=self.retry_delay_s(failures))

    def _remember_failure(self, sequence: int, failures: int) -> None:
        if len(self._failures) >= MAX_TRACKED_FAILURES:
            self._failures.pop(next(iter(self._failures)))
        self._failures[sequence] = failures

    def _count_conflict(self, sequence: int) -> int:
        if len(self._conflicts) >= MAX_TRACKED_FAILURES:
            self._conflicts.pop(next(iter(self._conflicts)))
        self._conflicts[sequence] = self._conflicts.get(sequence, 0) + 1
        return self._conflicts[sequence]

    async def _apply(self, envelope: EventEnvelope) -> bool:
        return await self._apply_batch([envelope]) > 0

    async def _apply_batch(self, envelopes: Sequence[EventEnvelope]) -> int:
        return await apply_events(self._database, self._handlers, envelopes)

    async def _park_or_retry(self, message: Msg, envelope: EventEnvelope | None, reason: str) -> None:
        try:
            await self._park(message, envelope, reason)
        except (nats.errors.Error, TimeoutError) as error:
            # Never drop it: if it cannot be parked now, it comes back and is parked later.
            log.error("event.park_failed", extra={"alert": True, "reason": reason, "error": repr(error)}, exc_info=True)
            await message.nak(delay=self._retry_delays_s[-1])

    async def _park(self, message: Msg, envelope: EventEnvelope | None, reason: str) -> None:
        """Move a message that can never be handled to the dead-letter stream, then stop its delivery."""
        metadata = message.metadata
        event_type = envelope.event_type if envelope else "undecodable"
        await self._jetstream.publish(
            f"{DEAD_LETTER_SUBJECT_ROOT}.{self._service}.{event_type}",
            message.data,
            headers={
                "Nats-Msg-Id": f"{self._service}:{metadata.stream}:{metadata.sequence.stream}",
                "Paysaga-Reason": reason[:1000],
                "Paysaga-Original-Subject": message.subject,
                "Paysaga-Original-Sequence": str(metadata.sequence.stream),
            },
            timeout=5,
        )
        await message.term()
        log.error(
            "event.dead_lettered",
            extra={
                "alert": True,
                "reason": reason,
                "subject": message.subject,
                "stream_sequence": metadata.sequence.stream,
                "saga_id": envelope.saga_id if envelope else None,
            },
        )
