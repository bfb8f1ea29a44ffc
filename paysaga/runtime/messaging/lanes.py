"""Lanes at run time: turns at the database, the lanes' durable consumers, and what they hold.

paysaga.core.lanes says which lane an event travels on; here:

- ``LaneScheduler``: a process's lanes take turns handling what they fetched. The compensation
  lane goes first whenever it is waiting; the tiers share the rest by weight (stride scheduling:
  each turn moves a lane's pass on by 1/weight, and the waiting lane with the lowest pass goes
  next), so a stricter tier gets more turns and no tier waits for ever (and a turn is short while
  another lane waits: paysaga.runtime.messaging.consumer);
- ``ensure_consumer``: creates a lane's durable consumer, or brings its limits up to date;
- ``adopt_single_consumers``: the upgrade from before lanes, when a service read each producer
  through one durable consumer (``<service>-from-<producer>``): the lane consumers start where
  that one had acknowledged everything, and it is deleted. Events stored before the upgrade keep
  their old subjects, which the lanes also read (paysaga.core.lanes), so none is left unread; one
  handled and acknowledged out of order may be delivered again, and the inbox skips it;
- ``read_lane_status``: a lane's backlog and the age of its oldest unacknowledged event, for the
  metrics and ``paysaga lanes``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from paysaga.core.lanes import COMPENSATION, LANES

log = logging.getLogger(__name__)


class LaneScheduler:
    """Turns for the lanes of one process: at most `slots` at a time (1 where the database has a
    single writer, SQLite; more where transactions run side by side, PostgreSQL).

    Stride scheduling: a turn moves the lane's pass on by 1/weight, and the waiting tier with the
    lowest pass goes next. A lane that comes back after a pause starts at most one round (1, a
    whole turn of weight 1) behind the busy lanes, so an idle lane banks at most one round of
    turns, however long it was idle."""

    def __init__(self, weights: Mapping[str, int], slots: int = 1) -> None:
        if slots < 1:
            raise ValueError("a scheduler needs at least one slot")
        self._weights = {lane: max(1, weights.get(lane, 1)) for lane in LANES}
        self._free = slots
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = {
            lane: collections.deque() for lane in LANES
        }
        self._held = dict.fromkeys(LANES, 0)
        self._passes = dict.fromkeys(LANES, 0.0)

    @contextlib.asynccontextmanager
    async def turn(self, lane: str) -> AsyncIterator[None]:
        await self._acquire(lane)
        try:
            yield
        finally:
            self._held[lane] -= 1
            self._release()

    def others_waiting(self, lane: str) -> bool:
        """Whether another lane waits for a turn: the holder of one should keep it short."""
        return any(queue for other, queue in self._waiting.items() if other != lane)

    def _active(self, lane: str) -> bool:
        return bool(self._held[lane] or self._waiting[lane])

    async def _acquire(self, lane: str) -> None:
        if not self._active(lane):
            busy = [self._passes[other] for other in LANES if other != lane and self._active(other)]
            if busy:
                self._passes[lane] = max(self._passes[lane], min(busy) - 1)
        if self._free > 0 and not any(self._waiting.values()):
            self._free -= 1
            self._granted(lane)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                with contextlib.suppress(ValueError):  # _release may have dropped it already
                    self._waiting[lane].remove(future)
            else:  # granted just as it was cancelled: pass the turn on
                self._held[lane] -= 1
                self._release()
            raise

    def _granted(self, lane: str) -> None:
        self._held[lane] += 1
        self._passes[lane] += 1 / self._weights[lane]

    def _release(self) -> None:
        while (lane := self._next()) is not None:
            future = self._waiting[lane].popleft()
            if not future.cancelled():
                self._granted(lane)
                future.set_result(None)
                return
        self._free += 1

    def _next(self) -> str | None:
        if self._waiting[COMPENSATION]:
            return COMPENSATION
        waiting = [lane for lane in LANES if lane != COMPENSATION and self._waiting[lane]]
        # Ties go to the stricter tier (LANES lists them strictest first).
        return min(waiting, key=lambda lane: self._passes[lane]) if waiting else None


def legacy_durable_name(service: str, producer: str) -> str:
    """The one durable consumer per producer a service had before lanes."""
    return f"{service}-from-{producer}"


async def ensure_consumer(jetstream: JetStreamContext, stream: str, config: ConsumerConfig) -> str:
    """Create the durable consumer, or bring its subjects and limits up to date (where it starts
    cannot change once it exists); returns what was done."""
    assert config.durable_name is not None
    try:
        info = await jetstream.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await jetstream.add_consumer(stream, config)
        return "created"
    current = info.config
    if (current.filter_subjects or [current.filter_subject]) == config.filter_subjects and (
        current.max_ack_pending,
        current.ack_wait,
    ) == (config.max_ack_pending, config.ack_wait):
        return "unchanged"
    kept = dataclasses.replace(config, deliver_policy=current.deliver_policy, opt_start_seq=current.opt_start_seq)
    await jetstream.add_consumer(stream, kept)
    log.info("consumer.updated", extra={"stream": stream, "consumer": config.durable_name})
    return "updated"


async def adopt_single_consumers(
    jetstream: JetStreamContext, service: str, lanes: Sequence[tuple[str, str, ConsumerConfig]]
) -> list[str]:
    """Move a service from its pre-lane consumers to its lanes: for each (producer, its stream,
    lane consumer config), if the service's old consumer of that producer still exists, create the
    lane consumer (if missing) from the old one's acknowledgement floor; then delete the old
    consumer. Returns the old consumers deleted. Safe to repeat and to run from several replicas
    at once."""
    by_producer: dict[tuple[str, str], list[ConsumerConfig]] = {}
    for producer, stream, config in lanes:
        by_producer.setdefault((producer, stream), []).append(config)
    adopted = []
    for (producer, stream), configs in by_producer.items():
        legacy = legacy_durable_name(service, producer)
        try:
            info = await jetstream.consumer_info(stream, legacy)
        except NotFoundError:
            continue  # never existed, already adopted, or the stream is not there yet
        start = info.ack_floor.stream_seq + 1 if info.ack_floor and info.ack_floor.stream_seq else 1
        for config in configs:
            assert config.durable_name is not None
            try:
                await jetstream.consumer_info(stream, config.durable_name)
            except NotFoundError:
                from_floor = dataclasses.replace(
                    config, deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
                )
                await jetstream.add_consumer(stream, from_floor)
        with contextlib.suppress(NotFoundError):
            await jetstream.delete_consumer(stream, legacy)
        log.warning(
            "consumer.adopted",
            extra={"stream": stream, "consumer": legacy, "from_sequence": start, "pending": info.num_pending},
        )
        adopted.append(legacy)
    return adopted


@dataclass(frozen=True)
class LaneStatus:
    stream: str
    consumer: str
    lane: str
    pending: int  # stored, not yet delivered
    ack_pending: int  # delivered, not yet acknowledged
    redelivered: int
    oldest_age_s: float  # of the oldest event not yet acknowledged; 0 when there is none


async def read_lane_status(
    jetstream: JetStreamContext, stream: str, consumer: str, lane: str, now: dt.datetime | None = None
) -> LaneStatus:
    """What JetStream holds for one lane consumer. The oldest event not yet acknowledged is the
    first of the consumer's subjects after its acknowledgement floor (everything up to the floor
    is acknowledged, and the floor stops at the first event that is not)."""
    info = await jetstream.consumer_info(stream, consumer)
    pending, ack_pending = info.num_pending or 0, info.num_ack_pending or 0
    age_s = 0.0
    if pending or ack_pending:
        start = (info.ack_floor.stream_seq or 0) + 1 if info.ack_floor else 1
        subjects = info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject else [])
        stored = []
        for subject in subjects or [">"]:
            with contextlib.suppress(NotFoundError):
                message = await jetstream.get_msg(stream, seq=start, subject=subject, next=True)
                if message.time is not None:
                    stored.append(message.time)
        if stored:
            age_s = max(0.0, ((now or dt.datetime.now(dt.UTC)) - min(stored)).total_seconds())
    return LaneStatus(stream, consumer, lane, pending, ack_pending, info.num_redelivered or 0, age_s)
