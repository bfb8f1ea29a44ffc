"""Lanes: every subject a handled event can have is read by exactly one of the service's lane
consumers, the right one; and the turns between lanes go compensation first, then by weight."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from paysaga.core import eventing, lanes
from paysaga.core.eventing import event_subject
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging.consumer import Subscription
from paysaga.runtime.messaging.lanes import LaneScheduler
from services.inventory import bootstrap as inventory
from services.ledger import bootstrap as ledger
from services.payments import bootstrap as payments

SERVICES = {"payments": payments.SUBSCRIPTIONS, "inventory": inventory.SUBSCRIPTIONS, "ledger": ledger.SUBSCRIPTIONS}


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: * is one token, > the rest."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(wanted) == len(tokens)


def readers(subscriptions: tuple[Subscription, ...], subject: str) -> list[str]:
    return [
        subscription.lane
        for subscription in subscriptions
        if any(matches(pattern, subject) for pattern in subscription.filter_subjects())
    ]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_subject_of_a_handled_event_is_read_by_exactly_its_lane(service: str) -> None:
    subscriptions = SERVICES[service]
    handled = {(s.producer, event) for s in subscriptions for event in s.event_types}
    assert handled
    for (producer, event), tier in itertools.product(sorted(handled), ("", *lanes.TIERS)):
        subject = event_subject(producer, event, tier)
        if event in lanes.NOTICES and tier:
            continue  # never published with a tier
        expected = lanes.lane_of(event, tier)
        assert readers(subscriptions, subject) == [expected], subject


def test_a_purchase_travels_on_its_tier_and_its_undoing_on_the_compensation_lane() -> None:
    assert lanes.lane_of("PaymentRequested", "critical") == "critical"
    assert lanes.lane_of("FundsHeld", "priority") == "priority"
    assert lanes.lane_of("FundsReleased", "critical") == "compensation"
    assert lanes.lane_of("PaymentRefundRequested", "standard") == "compensation"
    # Written before lanes, or outside a purchase.
    assert lanes.lane_of("StockReserved", "") == "standard"
    assert lanes.lane_of("AccountOpened", "") == "compensation"


def test_the_subject_carries_the_tier_and_a_bad_tier_is_refused() -> None:
    envelope = eventing.new_event(
        producer="ledger", saga_id="s", payload=events_pb2.FundsHeld(payment_id="s"), sla_tier="critical"
    )
    assert eventing.subject_of(envelope) == "paysaga.events.ledger.critical.FundsHeld"
    with pytest.raises(ValueError, match="unknown SLA tier"):
        eventing.new_event(producer="ledger", saga_id="s", payload=events_pb2.FundsHeld(), sla_tier="gold")
    envelope.sla_tier = "gold"
    with pytest.raises(ValueError, match="sla_tier"):
        eventing.parse(envelope.SerializeToString())


async def _contend(scheduler: LaneScheduler, workers: dict[str, int], turns: int = 20) -> list[str]:
    """Each lane's workers ask for `turns` turns each, one after the other; the order the turns
    went in."""
    order: list[str] = []

    async def worker(lane: str) -> None:
        for _ in range(turns):
            async with scheduler.turn(lane):
                order.append(lane)
                await asyncio.sleep(0)

    # Someone holds the only slot while everybody queues up, so the scheduler decides every turn.
    async with scheduler.turn("standard"):
        tasks = [asyncio.create_task(worker(lane)) for lane, count in workers.items() for _ in range(count)]
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    return order


async def test_compensations_go_first_and_tiers_share_by_weight() -> None:
    scheduler = LaneScheduler({"critical": 6, "priority": 3, "standard": 1})

    order = await _contend(scheduler, {"standard": 6, "priority": 6, "critical": 6, "compensation": 2}, turns=20)

    assert order[:40] == ["compensation"] * 40  # served first while it has work
    tiers = order[40:140]
    assert 58 <= tiers.count("critical") <= 62
    assert 28 <= tiers.count("priority") <= 32
    assert 9 <= tiers.count("standard") <= 11  # less, never none


async def test_an_idle_tier_banks_at_most_one_round_and_a_busy_one_takes_what_is_left() -> None:
    scheduler = LaneScheduler({"critical": 6, "priority": 3, "standard": 1})
    await _contend(scheduler, {"standard": 2}, turns=50)

    order = await _contend(scheduler, {"standard": 6, "critical": 6}, turns=20)

    # 100 turns of the standard lane alone bought the critical lane one round, no more: then 1 in 7.
    assert order[:7] == ["critical"] * 6 + ["standard"]
    assert order[7:77].count("standard") == 10


async def test_a_lane_with_one_worker_still_gets_its_share() -> None:
    scheduler = LaneScheduler({"critical": 6, "priority": 3, "standard": 1})

    order = await _contend(scheduler, {"standard": 1, "critical": 6}, turns=20)

    standard = [index for index, lane in enumerate(order) if lane == "standard"]
    assert len(standard) == 20
    assert all(later - earlier <= 8 for earlier, later in itertools.pairwise(standard))


async def test_a_cancelled_wait_gives_its_turn_to_the_next() -> None:
    scheduler = LaneScheduler({"critical": 1, "priority": 1, "standard": 1})
    done: list[str] = []
    async with scheduler.turn("standard"):
        waiting = asyncio.create_task(_take(scheduler, "critical", done))
        behind = asyncio.create_task(_take(scheduler, "priority", done))
        await asyncio.sleep(0.01)
        waiting.cancel()
    await behind
    assert done == ["priority"]
    async with asyncio.timeout(1):
        async with scheduler.turn("critical"):
            pass  # the slot came back


async def _take(scheduler: LaneScheduler, lane: str, done: list[str]) -> None:
    async with scheduler.turn(lane):
        done.append(lane)
