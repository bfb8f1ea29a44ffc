"""Durable JetStream consumers that hand each event to its handler exactly once in effect.

For every message: decode the envelope; in one transaction, skip it if its id is in the inbox,
else run the handler (which changes state and emits events into the outbox) and record the id;
commit; only then ack. So a crash anywhere means a redelivery, and a redelivery means no second
effect. On SQLite the messages of one fetch share that transaction (one commit, one fsync for all
of them: a group commit, paysaga.runtime.storage.group_commit), each in a savepoint of its own, so
a failure only ever undoes and concerns its own message.

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
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from typing_extensions import TypeVar

from paysaga.core import eventing, lanes
from paysaga.core.eventing import DEAD_LETTER_SUBJECT_ROOT, EventEnvelope
from paysaga.runtime import metrics
from paysaga.runtime.logs import log_context
from paysaga.runtime.messaging.lanes import LaneScheduler, ensure_consumer
from paysaga.runtime.messaging.pulls import Puller
from paysaga.runtime.storage.database import is_retryable, is_unavailable
from paysaga.runtime.storage.group_commit import each_in_savepoint, savepoints_if_needed
from paysaga.runtime.storage.unit_of_work import Database, UnitOfWork
from paysaga.runtime.tasks import sleep_or_stop

log = logging.getLogger(__name__)

U = TypeVar("U", bound=UnitOfWork, default=UnitOfWork)
# A service's reaction to one event, inside the unit of work that records it as handled.
EventHandler = Callable[[U, EventEnvelope], Awaitable[None]]

# Messages handled per transaction: one commit (one fsync) for all of them, so it bounds both the
# transaction's length (others wait for SQLite's single writer meanwhile) and the redone work
# when a batch must be split.
FETCH_BATCH = 64
# Events handled per turn while another lane waits for one (paysaga.runtime.messaging.lanes): how
# long a compensation or a stricter tier may wait for a lane's turn to end.
TURN_SHARE_CONTENDED = 16
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


def consumer_config(durable: str, filter_subjects: list[str], max_ack_pending: int | None = None) -> ConsumerConfig:
    """A durable pull consumer that delivers every event of its subjects until it is acked."""
    return ConsumerConfig(
        durable_name=durable,
        name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=-1,  # we count attempts ourselves and park the message; the server must never drop it
        max_ack_pending=max_ack_pending,
        filter_subjects=filter_subjects,
    )


@dataclass(frozen=True)
class Subscription:
    """The events of one producer that a service reacts to, on one lane (paysaga.core.lanes), or
    on all of them when lane is empty (one consumer for everything, e.g. the benchmark's)."""

    producer: str
    event_types: tuple[str, ...]
    lane: str = ""

    @property
    def stream(self) -> str:
        return f"{self.producer.upper()}_EVENTS"

    def durable_name(self, consumer: str) -> str:
        return f"{consumer}-from-{self.producer}" + (f"-{self.lane}" if self.lane else "")

    def filter_subjects(self) -> list[str]:
        return [
            subject
            for lane in ((self.lane,) if self.lane else lanes.LANES)
            for subject in lanes.lane_subjects(self.producer, lane, self.event_types)
        ]


async def apply_event(database: Database[U], handlers: Mapping[str, EventHandler[U]], envelope: EventEnvelope) -> bool:
    """Handle one event in a transaction of its own and record it in the inbox with its effects;
    False if it was handled before. Raises what the handler raised (then nothing is kept). What a
    consumer does with one message, and what the saga simulator does with each delivery."""
    async with database.transaction() as unit:
        if await unit.processed_among([envelope.event_id]):
            return False
        await _handle(handlers, unit, envelope)
        await unit.record_all_processed([envelope])
    return True


async def apply_each(
    database: Database[U], handlers: Mapping[str, EventHandler[U]], envelopes: Sequence[EventEnvelope]
) -> list[Exception | bool]:
    """Every event handled in one transaction, in order, each as if in a savepoint of its own (a
    group commit: run without savepoints first, again with them if a handler raised): per event,
    True if handled, False if a duplicate (in the inbox, or earlier in the list), or the handler's
    error (its effects undone, the others' kept). An error of the database itself is raised, and
    then nothing is kept."""
    return await savepoints_if_needed(database, functools.partial(_apply_each, handlers, envelopes))


async def _apply_each(
    handlers: Mapping[str, EventHandler[U]], envelopes: Sequence[EventEnvelope], unit: U, savepoints: bool
) -> list[Exception | bool]:
    seen = await unit.processed_among([envelope.event_id for envelope in envelopes])
    new: list[int] = []
    for index, envelope in enumerate(envelopes):
        if envelope.event_id not in seen:
            seen.add(envelope.event_id)
            new.append(index)
    works = [functools.partial(_handle, handlers, envelope=envelopes[index]) for index in new]
    outcomes: list[Exception | bool] = [False] * len(envelopes)
    for index, result in zip(new, await each_in_savepoint(unit, works, savepoints=savepoints), strict=True):
        outcomes[index] = result if isinstance(result, Exception) else True
    handled = [envelopes[index] for index in new if outcomes[index] is True]
    if handled:
        await unit.record_all_processed(handled)
    return outcomes


async def _handle(handlers: Mapping[str, EventHandler[U]], unit: U, envelope: EventEnvelope) -> None:
    with log_context(saga_id=envelope.saga_id, event_id=envelope.event_id, event_type=envelope.event_type):
        await handlers[envelope.event_type](unit, envelope)


def subscriptions_for(handlers: Mapping[str, object]) -> tuple[Subscription, ...]:
    """What a service must consume to feed its handlers: one subscription per producer and lane
    that carries any of the event types it handles (the one place that says which events a
    service reacts to)."""
    by_producer: dict[str, list[str]] = {}
    for event_type in handlers:
        by_producer.setdefault(eventing.PRODUCER_OF[event_type], []).append(event_type)
    return tuple(
        Subscription(producer, tuple(types), lane)
        for producer, types in sorted(by_producer.items())
        for lane in lanes.LANES
        if lanes.lane_subjects(producer, lane, types)
    )


class EventConsumer(Generic[U]):
    def __init__(
        self,
        service: str,
        jetstream: JetStreamContext,
        database: Database[U],
        subscription: Subscription,
        handlers: Mapping[str, EventHandler[U]],
        *,
        max_attempts: int = MAX_ATTEMPTS,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
        scheduler: LaneScheduler | None = None,
        max_ack_pending: int | None = None,
        workers: int = 1,
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
        # Whose turn it is to handle what was fetched (lanes of one process take turns); None: always ours.
        self._scheduler = scheduler
        self._lane = subscription.lane or lanes.COMPENSATION
        self._max_ack_pending = max_ack_pending
        self._workers = workers
        self._fetch_batch = min(FETCH_BATCH, max_ack_pending or FETCH_BATCH)
        self._failures: dict[int, int] = {}  # stream sequence -> handler failures so far
        self._conflicts: dict[int, int] = {}  # stream sequence -> transaction conflicts so far
        # Group commit on SQLite only: there writers take turns anyway. On PostgreSQL a batch would
        # hold the row locks of many handlers, taken in no common order, until its one commit:
        # replicas would wait on each other and could deadlock.
        self._batching = database.single_writer

    @property
    def producer(self) -> str:
        return self._subscription.producer

    @property
    def stream(self) -> str:
        return self._subscription.stream

    @property
    def lane(self) -> str:
        return self._lane

    @property
    def config(self) -> ConsumerConfig:
        """The durable consumer it reads through."""
        return consumer_config(self.name, self._subscription.filter_subjects(), self._max_ack_pending)

    def retry_delay_s(self, attempt: int) -> float:
        return self._retry_delays_s[min(attempt, len(self._retry_delays_s)) - 1]

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch and handle until stop, with as many fetch loops as it has workers."""
        await asyncio.gather(*(self._work(stop) for _ in range(self._workers)))

    async def _work(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            puller = await self._subscribe(stop)
            if puller is None:
                return
            try:
                await self._consume(puller, stop)
            finally:
                with contextlib.suppress(nats.errors.Error):
                    await puller.close()

    async def _consume(self, puller: Puller, stop: asyncio.Event) -> None:
        """Fetch and handle until stop, or until fetching keeps failing (e.g. the durable consumer
        was deleted): then the caller subscribes again, which recreates it."""
        failures = 0
        while not stop.is_set():
            try:
                messages = await puller.next_batch(FETCH_TIMEOUT_S)
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
            if not messages:
                continue
            if self._scheduler is None:
                await self.handle_batch(messages)
                continue
            await self._handle_in_turns(self._scheduler, messages)

    async def _handle_in_turns(self, scheduler: LaneScheduler, messages: list[Msg]) -> None:
        """Handle the fetch in turns: all of it in one (one commit) while no other lane waits, else a
        short share per turn, so that the scheduler, not the size of a batch, decides who goes next."""
        while messages:
            async with scheduler.turn(self._lane):
                share = TURN_SHARE_CONTENDED if scheduler.others_waiting(self._lane) else len(messages)
                await self.handle_batch(messages[:share])
            messages = messages[share:]

    async def _subscribe(self, stop: asyncio.Event) -> Puller | None:
        """Create (or find) the durable consumer; waits for the producer's stream to exist."""
        stream, config = self._subscription.stream, self.config
        while not stop.is_set():
            try:
                await ensure_consumer(self._jetstream, stream, config)
                puller = Puller(self._jetstream, stream, self.name, self._fetch_batch)
                await puller.open()
                return puller
            except NotFoundError:
                log.info("consumer.waiting_for_stream", extra={"stream": stream})
            except (nats.errors.Error, TimeoutError) as error:
                log.warning(
                    "consumer.subscribe_failed", extra={"stream": self._subscription.stream, "error": repr(error)}
                )
            await sleep_or_stop(stop, SUBSCRIBE_RETRY_S)
        return None

    async def handle_batch(self, messages: Sequence[Msg]) -> None:
        """Handle fetched messages, then ack each one handled. On SQLite they share one transaction
        and one commit (one fsync), each in a savepoint, so a failure is undone, retried, counted or
        parked for its own message only; on PostgreSQL each has a transaction of its own."""
        self._observe_waits(messages)
        decoded = [(message, envelope) for message in messages if (envelope := await self._decode(message))]
        if self._batching and len(decoded) > 1:
            started = time.perf_counter()
            try:
                outcomes = await apply_each(self._database, self._handlers, [envelope for _, envelope in decoded])
            except Exception as error:  # noqa: BLE001 - the database failed the whole batch
                if is_operating_error(error):
                    # The database or NATS is down: one by one, each would wait for it in turn.
                    log.warning("event.retry_later", extra={"messages": len(decoded), "error": repr(error)})
                    for message, _ in decoded:
                        await message.nak(delay=self.retry_delay_s(message.metadata.num_delivered))
                    return
                log.info("consumer.batch_split", extra={"messages": len(decoded), "error": repr(error)})
            else:
                share_s = (time.perf_counter() - started) / len(decoded)
                for (message, envelope), outcome in zip(decoded, outcomes, strict=True):
                    metrics.EVENT_HANDLING_SECONDS.labels(envelope.producer, envelope.event_type).observe(share_s)
                    await self._conclude(message, envelope, outcome)
                return
        for message, envelope in decoded:
            started = time.perf_counter()
            outcome = await self._apply_alone(envelope)
            metrics.EVENT_HANDLING_SECONDS.labels(envelope.producer, envelope.event_type).observe(
                time.perf_counter() - started
            )
            await self._conclude(message, envelope, outcome)

    def _observe_waits(self, messages: Sequence[Msg]) -> None:
        now = dt.datetime.now(dt.UTC)
        waited = metrics.LANE_WAIT_SECONDS.labels(self._lane)
        for message in messages:
            waited.observe(max(0.0, (now - message.metadata.timestamp).total_seconds()))

    async def _apply_alone(self, envelope: EventEnvelope) -> Exception | bool:
        try:
            return await apply_event(self._database, self._handlers, envelope)
        except Exception as error:  # noqa: BLE001 - its verdict is in _conclude
            return error

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

    async def _conclude(self, message: Msg, envelope: EventEnvelope, outcome: Exception | bool) -> None:
        """Ack a message handled (True) or a duplicate (False); for an error, retry or park it."""
        attempt = message.metadata.num_delivered
        sequence = message.metadata.sequence.stream
        with log_context(saga_id=envelope.saga_id, event_id=envelope.event_id, event_type=envelope.event_type):
            if isinstance(outcome, Exception):
                conflict = is_retryable(outcome) and self._count_conflict(sequence) <= MAX_CONFLICT_RETRIES
                if is_operating_error(outcome) or conflict:
                    # The database or NATS is unavailable, or the transaction conflicted with a
                    # concurrent one: not the handler's fault, so it does not count.
                    log.warning("event.retry_later", extra={"delivery": attempt, "error": repr(outcome)})
                    self._count(envelope, "retry")
                    await message.nak(delay=self.retry_delay_s(attempt))
                    return
                # Only the handler's own failures count towards parking: deliveries during an
                # outage or after an ack timeout do not. Kept in memory, so a restart only ever
                # gives an event more attempts, never fewer.
                self._count(envelope, "failed")
                await self._handler_failed(message, envelope, sequence, outcome)
                return
            self._failures.pop(sequence, None)
            self._conflicts.pop(sequence, None)
            self._count(envelope, "applied" if outcome else "duplicate")
            await message.ack()
            log.debug("event.handled" if outcome else "event.duplicate_skipped")

    @staticmethod
    def _count(envelope: EventEnvelope, outcome: str) -> None:
        metrics.EVENTS_HANDLED.labels(envelope.producer, envelope.event_type, outcome).inc()

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
        metrics.DEAD_LETTERS.labels(envelope.producer if envelope else "unknown", event_type).inc()
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
