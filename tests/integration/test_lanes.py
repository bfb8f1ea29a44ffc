"""Lanes against a real nats-server and a real SQLite file: each lane consumer gets its tier's
events and every tier's compensations, a compensation overtakes a backlog, no tier starves, and a
service from before lanes hands its consumers' place over to the lanes without losing or
repeating an effect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

from paysaga.core.eventing import EventEnvelope, event_subject, new_event
from paysaga.core.lanes import LANES
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging.consumer import (
    EventConsumer,
    EventHandler,
    Subscription,
    apply_event,
    consumer_config,
)
from paysaga.runtime.messaging.lanes import LaneScheduler, adopt_single_consumers, read_lane_status
from paysaga.runtime.storage.unit_of_work import UnitOfWork
from tests.helpers import eventually
from tests.integration.messaging_rig import Rig, effects

TYPES = ("FundsHeld", "FundsReleased")
STREAM = "LEDGER_EVENTS"


def event(event_type: str, tier: str) -> EventEnvelope:
    payment_id = str(uuid.uuid4())
    payload = events_pb2.FundsHeld(payment_id=payment_id) if event_type == "FundsHeld" else events_pb2.FundsReleased()
    return new_event(producer="ledger", saga_id=payment_id, payload=payload, sla_tier=tier)


class Recorder:
    """Handles FundsHeld and FundsReleased with an effect each, and notes which lane handled what."""

    def __init__(self) -> None:
        self.handled: list[tuple[str, str]] = []  # (lane, saga id), in the order handled

    def consumers(
        self, rig: Rig, scheduler: LaneScheduler | None = None, workers: dict[str, int] | None = None
    ) -> list[EventConsumer]:
        return [
            EventConsumer(
                rig.service,
                rig.jetstream,
                rig.database,
                Subscription(rig.producer, TYPES, lane),
                dict.fromkeys(TYPES, self._handler(lane)),
                scheduler=scheduler,
                workers=(workers or {}).get(lane, 1),
            )
            for lane in LANES
        ]

    def _handler(self, lane: str) -> EventHandler:
        async def handle(unit: UnitOfWork, envelope: EventEnvelope) -> None:
            self.handled.append((lane, envelope.saga_id))
            await unit.connection.execute(effects.insert().values(payment_id=envelope.saga_id))

        return handle

    def lane_of(self, saga_id: str) -> list[str]:
        return [lane for lane, saga in self.handled if saga == saga_id]

    def position(self, saga_id: str) -> int:
        return [saga for _, saga in self.handled].index(saga_id)


async def run_all(consumers: Sequence[EventConsumer], handled: list[tuple[str, str]], count: int) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(consumer.run(stop)) for consumer in consumers]
    try:
        await eventually(lambda: _at_least(handled, count), f"{count} events handled", 60)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)


async def _at_least(handled: list[tuple[str, str]], count: int) -> bool:
    return len(handled) >= count


async def test_each_lane_gets_its_tier_and_the_compensations_of_every_tier(rig: Rig) -> None:
    recorder = Recorder()
    sent = {
        (event_type, tier): event(event_type, tier)
        for event_type in TYPES
        for tier in ("critical", "priority", "standard", "")
    }
    for envelope in sent.values():
        await rig.publish(envelope)

    await run_all(recorder.consumers(rig), recorder.handled, len(sent))

    lanes = {key: recorder.lane_of(envelope.saga_id) for key, envelope in sent.items()}
    assert lanes == {
        ("FundsHeld", "critical"): ["critical"],
        ("FundsHeld", "priority"): ["priority"],
        ("FundsHeld", "standard"): ["standard"],
        ("FundsHeld", ""): ["standard"],  # stored before lanes
        ("FundsReleased", "critical"): ["compensation"],
        ("FundsReleased", "priority"): ["compensation"],
        ("FundsReleased", "standard"): ["compensation"],
        ("FundsReleased", ""): ["compensation"],
    }


async def test_a_compensation_overtakes_a_backlog_of_purchases(rig: Rig) -> None:
    recorder = Recorder()
    backlog = [event("FundsHeld", "standard") for _ in range(400)]
    for envelope in backlog:
        await rig.publish(envelope)
    undo = event("FundsReleased", "standard")
    await rig.publish(undo)  # stored after all 400

    await run_all(recorder.consumers(rig, LaneScheduler({})), recorder.handled, len(backlog) + 1)

    # One consumer for everything would have handled it last; its lane has it handled within the
    # first batches of the backlog.
    assert recorder.position(undo.saga_id) < 2 * 64


async def test_no_tier_starves_behind_a_stricter_one(rig: Rig) -> None:
    recorder = Recorder()
    critical = [event("FundsHeld", "critical") for _ in range(600)]
    standard = [event("FundsHeld", "standard") for _ in range(100)]
    for envelope in critical + standard:  # the standard events are stored after every critical one
        await rig.publish(envelope)
    scheduler = LaneScheduler({"critical": 6, "priority": 3, "standard": 1})

    await run_all(recorder.consumers(rig, scheduler, {"critical": 3}), recorder.handled, len(critical) + len(standard))

    lanes = [lane for lane, _ in recorder.handled]
    # While both have work the critical lane (more workers, more weight) gets more turns, and the
    # standard lane still gets some: it is not left until the critical backlog is gone.
    first_half = lanes[: len(lanes) // 2]
    assert first_half.count("standard") >= 32
    assert first_half.count("critical") > 2 * first_half.count("standard")


async def test_an_upgrade_from_one_consumer_per_producer_loses_and_repeats_nothing(rig: Rig) -> None:
    # The service before lanes: one durable consumer of the ledger, filtered by the old subjects.
    legacy = "payments-from-ledger"
    old_subjects = [event_subject("ledger", event_type) for event_type in TYPES]
    await rig.ops.add_consumer(STREAM, consumer_config(legacy, old_subjects))
    before = [event(event_type, "") for event_type in ("FundsHeld", "FundsHeld", "FundsReleased", "FundsHeld")]
    for envelope in before:
        await rig.publish(envelope)
    # It handled the first three; it acknowledged the first and the third, then it was stopped.
    old = await rig.ops.pull_subscribe_bind(durable=legacy, stream=STREAM)
    messages = await old.fetch(3, timeout=5)
    for message in messages:
        await apply_event(rig.database, dict.fromkeys(TYPES, _old_handler), event_of(message.data))
    await messages[0].ack()
    await messages[2].ack()
    await old.unsubscribe()

    recorder = Recorder()
    consumers = recorder.consumers(rig)
    adopted = await adopt_single_consumers(
        rig.jetstream, "payments", [(c.producer, c.stream, c.config) for c in consumers]
    )
    assert adopted == [legacy]
    assert legacy not in await _consumer_names(rig)
    # A producer not yet upgraded still publishes the old way.
    late = event("FundsHeld", "")
    await rig.publish(late)

    await run_all(consumers, recorder.handled, 2)
    await eventually(lambda: _all_idle(rig, consumers), "every lane idle")

    # The second (handled, never acknowledged) was delivered again and skipped by the inbox; the
    # fourth, stored before the upgrade, and the late one were handled once each.
    assert sorted(saga for _, saga in recorder.handled) == sorted([before[3].saga_id, late.saga_id])
    assert sorted(await rig.effects()) == sorted(envelope.saga_id for envelope in [*before, late])
    assert adopted == [legacy] and await adopt_single_consumers(rig.jetstream, "payments", []) == []


async def _old_handler(unit: UnitOfWork, envelope: EventEnvelope) -> None:
    await unit.connection.execute(effects.insert().values(payment_id=envelope.saga_id))


def event_of(data: bytes) -> EventEnvelope:
    return EventEnvelope.FromString(data)


async def _consumer_names(rig: Rig) -> list[str]:
    return [info.name for info in await rig.ops.consumers_info(STREAM)]


async def _all_idle(rig: Rig, consumers: Sequence[EventConsumer]) -> bool:
    for consumer in consumers:
        status = await read_lane_status(rig.ops, STREAM, consumer.name, consumer.lane)
        if status.pending or status.ack_pending:
            return False
    return True


async def test_the_oldest_waiting_event_of_a_lane_is_measured_from_the_stream(rig: Rig) -> None:
    compensation, lane = Recorder().consumers(rig)[:2]  # the compensation lane and the critical one
    for consumer in (compensation, lane):
        await rig.jetstream.add_consumer(STREAM, consumer.config)
    first = event("FundsHeld", "critical")
    await rig.publish(first)
    await asyncio.sleep(0.5)
    await rig.publish(event("FundsHeld", "critical"))

    status = await read_lane_status(rig.jetstream, STREAM, lane.name, lane.lane)

    assert (status.lane, status.pending, status.ack_pending) == ("critical", 2, 0)
    assert 0.5 <= status.oldest_age_s < 30
    idle = await read_lane_status(rig.jetstream, STREAM, compensation.name, compensation.lane)
    assert idle.oldest_age_s == 0 and idle.pending == 0
