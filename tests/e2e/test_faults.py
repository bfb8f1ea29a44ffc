"""Faults in the running cluster: a service or a NATS node killed mid-saga, events delivered
twice, a relay that crashed between publishing and marking sent. Every saga still ends, nothing is done twice,
and money and stock are conserved."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import sqlalchemy as sa

from paysaga.core.eventing import subject_of
from paysaga.payments.v1 import payments_pb2
from paysaga.runtime.messaging.streams import owned_streams
from paysaga.runtime.storage.database import create_engine
from tests.e2e.shop import Purchase, Shop, status_name
from tests.e2e.test_saga import PRICE, settled
from tests.helpers import connect_as

pytestmark = pytest.mark.e2e
SAGAS = 8
# The longest a cluster of three nats-servers may take to carry on after losing a node: its
# stream and consumer groups elect new leaders (a few seconds each, measured).
STALL_MAX_S = 30.0


async def test_services_killed_mid_saga_every_saga_still_ends_and_nothing_is_lost(shop: Shop) -> None:
    """Each service of the saga (its first replica, where there are two) SIGKILLed with sagas at
    every step: one after another, each started again at once. (The chaos suite, run by CI, kills
    them one at a time, at random, under load.)"""
    purchases = [await shop.setup(funds_minor=PRICE, stock=1) for _ in range(SAGAS)]
    created = await asyncio.gather(*(shop.pay(purchase, amount_minor=PRICE) for purchase in purchases))

    for victim in ("ledger", "inventory", "payments"):
        shop.cluster.kill(victim)  # SIGKILL: no drain, in-flight transactions and acks are lost
        await asyncio.sleep(0.1)
        shop.cluster.start_service(victim)
    for victim in ("ledger", "inventory", "payments"):
        shop.cluster.wait_serving(victim)

    await each_ended_whole(shop, purchases, created)


async def test_nats_node_killed_mid_saga_every_saga_still_ends_and_nothing_is_lost(shop: Shop) -> None:
    """The node leading the payments stream dies. A lone nats-server is an outage until it is
    back; a cluster of three elects new leaders and carries on without it."""
    cluster = shop.cluster
    purchases = [await shop.setup(funds_minor=PRICE, stock=1) for _ in range(SAGAS)]
    created = await asyncio.gather(*(shop.pay(purchase, amount_minor=PRICE) for purchase in purchases))
    victim = await stream_leader(shop, owned_streams("payments")[0].name)

    killed_at = time.monotonic()
    cluster.kill(victim)
    if len(cluster.nats_nodes) == 1:
        await asyncio.sleep(0.3)
        cluster.start_nats(victim)
    else:
        # A purchase made after the loss completes while the node is still down: the stall measured.
        probe = await shop.setup(funds_minor=PRICE, stock=1)
        while status_name(await shop.finish((await shop.pay(probe, amount_minor=PRICE)).payment_id)) != "COMPLETED":
            assert time.monotonic() - killed_at < STALL_MAX_S, "no purchase completes without the lost node"
        print(f"a purchase completed {time.monotonic() - killed_at:.1f} s after NATS node {victim} was killed")
    await each_ended_whole(shop, purchases, created)
    if victim not in cluster.processes:
        cluster.start_nats(victim)
        await settled(shop)


async def each_ended_whole(shop: Shop, purchases: list[Purchase], created: list[payments_pb2.Payment]) -> None:
    """Every saga ended: completed, or failed only by running out of time while the cluster was
    hurt, its hold released; and the cluster settles with its invariants whole."""
    finished = [await shop.finish(payment.payment_id) for payment in created]
    statuses = {status_name(payment) for payment in finished}
    assert statuses <= {"COMPLETED", "FAILED"}, statuses
    assert all(
        payment.reason.startswith("saga timed out") for payment in finished if status_name(payment) == "FAILED"
    ), "a saga may only fail here by running out of time while the cluster was hurt"
    for purchase, payment in zip(purchases, finished, strict=True):
        completed = status_name(payment) == "COMPLETED"
        assert await shop.balance(purchase.payer) == ((0, 0, 0) if completed else (PRICE, 0, PRICE))
        assert await shop.balance(purchase.merchant) == ((PRICE, 0, PRICE) if completed else (0, 0, 0))
    await settled(shop)


async def stream_leader(shop: Shop, stream: str) -> str:
    """The process name of the NATS node that leads a stream (the only one, without a cluster)."""
    cluster = shop.cluster
    if len(cluster.nats_nodes) == 1:
        return cluster.nats_nodes[0].name
    client = await connect_as(cluster.nats_url, cluster.tls_files("ops"))
    try:
        info = await client.jetstream().stream_info(stream)
    finally:
        await client.close()
    assert info.cluster is not None
    return next(node.name for node in cluster.nats_nodes if node.server_name == info.cluster.leader)


async def test_events_delivered_again_have_no_second_effect(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    payment = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)
    assert status_name(payment) == "COMPLETED"
    await settled(shop)
    events = await shop.saga_events(payment.payment_id)

    # Deliver every event of the saga a second time, each under a new message id so that
    # JetStream stores it again and every consumer receives it again.
    for event in events:
        client = await connect_as(shop.cluster.nats_url, shop.cluster.tls_files(event.producer))
        try:
            await client.jetstream().publish(
                subject_of(event),
                event.SerializeToString(),
                headers={"Nats-Msg-Id": str(uuid.uuid4())},
                timeout=5,
            )
        finally:
            await client.close()
    await settled(shop)

    assert status_name(await shop.payment(payment.payment_id)) == "COMPLETED"
    assert await shop.balance(purchase.payer) == (5000 - PRICE, 0, 5000 - PRICE)
    assert await shop.balance(purchase.merchant) == (PRICE, 0, PRICE)
    assert await shop.stock(purchase.sku) == (2, 0, 1)
    emitted = [event.event_id for event in await shop.saga_events(payment.payment_id)]
    assert sorted(set(emitted)) == sorted(event.event_id for event in events), "no handler emitted anything new"
    await settled(shop)


async def test_relay_crash_between_publish_and_mark_publishes_nothing_twice(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    payment = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)
    await settled(shop)
    before = await shop.saga_events(payment.payment_id)

    for instance in shop.cluster.instances("payments"):
        shop.cluster.kill(instance)
    # What a crash right after JetStream acknowledged, before the outbox rows were marked, leaves:
    engine = create_engine(shop.cluster.database_url("payments"))
    async with engine.begin() as connection:
        result = await connection.execute(
            sa.text("UPDATE outbox SET published_at = NULL WHERE saga_id = :saga"), {"saga": payment.payment_id}
        )
        reset = result.rowcount
    await engine.dispose()
    for instance in shop.cluster.instances("payments"):
        shop.cluster.restart(instance)
    await settled(shop)

    assert reset == len([event for event in before if event.producer == "payments"])
    after = await shop.saga_events(payment.payment_id)
    assert [event.event_id for event in after] == [event.event_id for event in before]
    assert await shop.balance(purchase.payer) == (5000 - PRICE, 0, 5000 - PRICE)
