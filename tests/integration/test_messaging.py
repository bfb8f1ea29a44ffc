"""The outbox relay and the event consumer against a real nats-server and a real SQLite file:
exactly-once effects under redelivery, retries, dead letters, and a relay crash."""

from __future__ import annotations

import asyncio
import collections
import uuid

import pytest
import sqlalchemy as sa
from nats.js.errors import NotFoundError

from paysaga.core.eventing import EventEnvelope, new_event, subject_of
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging import pulls, streams, windows
from paysaga.runtime.messaging import relay as relay_module
from paysaga.runtime.messaging.batches import Outgoing, publish_all
from paysaga.runtime.messaging.consumer import EventConsumer
from paysaga.runtime.messaging.relay import OutboxRelay
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import Database, UnitOfWork
from tests.helpers import eventually
from tests.integration.messaging_rig import Rig, effects, metadata


def funds_held(payment_id: str, producer: str) -> EventEnvelope:
    return new_event(producer=producer, saga_id=payment_id, payload=events_pb2.FundsHeld(payment_id=payment_id))


async def run_until(
    rig: Rig, consumer: EventConsumer, done: asyncio.Event | None = None, timeout_s: float = 20.0
) -> None:
    """Run the consumer until done is set (if given) and it has nothing left to deliver or to be
    acknowledged (every message handled, skipped or parked), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        if done is not None:
            await asyncio.wait_for(done.wait(), timeout=timeout_s)
        await eventually(lambda: consumer_idle(rig, consumer.name), f"{consumer.name} is idle", timeout_s)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def consumer_idle(rig: Rig, consumer_name: str) -> bool:
    try:
        info = await rig.ops.consumer_info(f"{rig.producer.upper()}_EVENTS", consumer_name)
    except NotFoundError:
        return False  # not created yet
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_the_same_event_delivered_twice_has_one_effect(rig: Rig) -> None:
    calls: list[str] = []

    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        calls.append(event.event_id)
        await unit.connection.execute(effects.insert().values(payment_id=event.saga_id))

    consumer = rig.consumer(handler)
    event = funds_held(str(uuid.uuid4()), rig.producer)
    await rig.publish(event)
    await rig.publish(event)  # a different message id: JetStream stores and delivers it again

    await run_until(rig, consumer)

    assert await rig.effects() == [event.saga_id]
    assert calls == [event.event_id], "the duplicate was skipped by the inbox, the handler never ran twice"
    assert await consumer_idle(rig, consumer.name)


async def test_a_fetched_batch_commits_once_and_a_failing_event_only_fails_itself(rig: Rig) -> None:
    events = [funds_held(str(uuid.uuid4()), rig.producer) for _ in range(5)]
    failing = events[2]
    failed_once = asyncio.Event()
    failing_applied = asyncio.Event()

    calls: list[str] = []

    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        calls.append(event.event_id)
        await unit.connection.execute(effects.insert().values(payment_id=event.saga_id))
        if event.event_id == failing.event_id and not failed_once.is_set():
            failed_once.set()
            raise ValueError("not yet")  # after writing: that write must be undone
        if event.event_id == failing.event_id:
            failing_applied.set()

    commits: list[int] = []
    rig.database.on_commit(lambda unit: commits.append(1))
    consumer = rig.consumer(handler, retry_delays_s=(0.05,))
    for event in events:
        await rig.publish(event)
    await rig.publish(events[0])  # the same event again, in the same fetch

    await run_until(rig, consumer, failing_applied)

    assert sorted(await rig.effects()) == sorted(event.saga_id for event in events), "each event had one effect"
    assert failed_once.is_set()
    # The failing event ran twice (failed, then succeeded). A fetch runs without savepoints first;
    # a failure rolls that back and the fetch runs again, each event in its savepoint: the events
    # before the failing one ran twice (the first run undone), the others once; one effect each.
    counted = collections.Counter(calls)
    assert counted[failing.event_id] == 2
    # (On PostgreSQL each event has a transaction of its own: only the failing one runs twice.)
    expected = [2, 2, 2, 1, 1] if rig.database.single_writer else [1, 1, 2, 1, 1]
    assert [counted[event.event_id] for event in events] == expected
    assert await consumer_idle(rig, consumer.name)

    # Without a failure, all of a fetch is one transaction on SQLite (one commit); on PostgreSQL
    # each message has its own.
    more = [funds_held(str(uuid.uuid4()), rig.producer) for _ in range(4)]
    for event in more:
        await rig.publish(event)
    commits.clear()
    await run_until(rig, consumer)
    assert len(commits) == (1 if rig.database.single_writer else len(more))
    assert len(await rig.effects()) == len(events) + len(more)


async def test_a_handler_that_keeps_failing_is_parked_in_the_dead_letter_stream(rig: Rig) -> None:
    attempts: list[int] = []
    parked = asyncio.Event()

    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        attempts.append(1)
        if len(attempts) >= 3:
            parked.set()
        raise ValueError("amount does not add up")

    consumer = rig.consumer(handler, max_attempts=3, retry_delays_s=(0.05,))
    event = funds_held(str(uuid.uuid4()), rig.producer)
    await rig.publish(event)

    await run_until(rig, consumer, parked)

    assert len(attempts) == 3
    assert await rig.effects() == []
    dead = await rig.dead_letter("FundsHeld")
    assert dead.data == event.SerializeToString()
    assert dead.headers is not None
    assert dead.headers["Paysaga-Reason"] == "handler failed 3 times: ValueError('amount does not add up')"
    assert await consumer_idle(rig, consumer.name)


async def test_an_undecodable_message_is_parked_at_once(rig: Rig) -> None:
    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        raise AssertionError("never called")

    consumer = rig.consumer(handler)
    await rig.producer_jetstream.publish(f"paysaga.events.{rig.producer}.FundsHeld", b"\xff not a protobuf", timeout=5)

    await run_until(rig, consumer)

    dead = await rig.dead_letter("undecodable")
    assert dead.data == b"\xff not a protobuf"
    assert dead.headers is not None and dead.headers["Paysaga-Reason"].startswith("undecodable event")
    assert await consumer_idle(rig, consumer.name)


async def test_an_operating_error_is_retried_without_counting_towards_parking(rig: Rig) -> None:
    done = asyncio.Event()
    failures = 0

    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise sa.exc.OperationalError("UPDATE accounts", {}, Exception("database is locked"))
        await unit.connection.execute(effects.insert().values(payment_id=event.saga_id))
        done.set()

    consumer = rig.consumer(handler, max_attempts=2, retry_delays_s=(0.05,))
    event = funds_held(str(uuid.uuid4()), rig.producer)
    await rig.publish(event)

    await run_until(rig, consumer, done)

    assert failures == 3
    assert await rig.effects() == [event.saga_id]
    assert await consumer_idle(rig, consumer.name)


async def test_relay_publishes_in_order_and_a_republish_after_a_crash_is_dropped(rig: Rig) -> None:
    saga_id = str(uuid.uuid4())
    sent = [funds_held(saga_id, rig.producer) for _ in range(3)]
    async with rig.database.transaction() as unit:
        for event in sent:
            unit.emit_envelope(event)
    relay = OutboxRelay(rig.database, rig.producer_jetstream)
    stream = f"{rig.producer.upper()}_EVENTS"

    assert await relay.publish_pending() == 3
    # A crash after JetStream acknowledged but before the rows were marked sent, then a restart:
    async with rig.database.transaction() as unit:
        await unit.connection.execute(rig.database.outbox.update().values(published_at=None))
    relay = OutboxRelay(rig.database, rig.producer_jetstream)
    assert await relay.publish_pending() == 3

    info = await rig.ops.stream_info(stream)
    assert info.state.messages == 3, "the re-published events were dropped as duplicates"
    stored = [await rig.ops.get_msg(stream, sequence) for sequence in (1, 2, 3)]
    assert [EventEnvelope.FromString(message.data or b"").event_id for message in stored] == [
        event.event_id for event in sent
    ]
    assert [message.headers["Nats-Msg-Id"] for message in stored if message.headers] == [
        event.event_id for event in sent
    ]
    assert await relay.publish_pending() == 0


async def test_relay_publishes_a_large_batch_atomically_and_falls_back_to_single_publishes_for_duplicates(
    rig: Rig,
) -> None:
    saga_id = str(uuid.uuid4())
    sent = [funds_held(saga_id, rig.producer) for _ in range(6)]
    async with rig.database.transaction() as unit:
        for event in sent:
            unit.emit_envelope(event)
    stream = f"{rig.producer.upper()}_EVENTS"
    relay = OutboxRelay(rig.database, rig.producer_jetstream, atomic_batch_min=4)

    assert await relay.publish_pending() == 6
    stored = [await rig.ops.get_msg(stream, sequence) for sequence in range(1, 7)]
    headers = [message.headers or {} for message in stored]
    assert [header.get("Nats-Msg-Id") for header in headers] == [event.event_id for event in sent]
    assert len({header.get("Nats-Batch-Id") for header in headers}) == 1, "one atomic batch"
    assert headers[0].get("Nats-Batch-Id"), "one atomic batch"

    # Published again (a crash before the marks): JetStream refuses a batch of ids it has, and the
    # relay publishes them one by one instead, where each is dropped as a duplicate.
    async with rig.database.transaction() as unit:
        await unit.connection.execute(rig.database.outbox.update().values(published_at=None))
    relay = OutboxRelay(rig.database, rig.producer_jetstream, atomic_batch_min=4)
    assert await relay.publish_pending() == 6
    assert (await rig.ops.stream_info(stream)).state.messages == 6
    assert await relay.publish_pending() == 0


async def test_publish_all_below_the_threshold_or_with_atomic_batches_off_publishes_one_by_one(rig: Rig) -> None:
    stream = f"{rig.producer.upper()}_EVENTS"
    events = [funds_held(str(uuid.uuid4()), rig.producer) for _ in range(3)]
    outgoing = [Outgoing(subject_of(event), event.SerializeToString(), event.event_id) for event in events]
    assert await publish_all(rig.producer_jetstream, outgoing[:2], 5, atomic_batch_min=3) == [None, None]
    assert await publish_all(rig.producer_jetstream, outgoing[2:], 5, atomic_batch_min=0) == [None]
    stored = [await rig.ops.get_msg(stream, sequence) for sequence in (1, 2, 3)]
    assert not any("Nats-Batch-Id" in (message.headers or {}) for message in stored)


async def test_relay_publishes_its_own_commits_others_commits_and_an_overflow_each_once(
    rig: Rig, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = f"{rig.producer.upper()}_EVENTS"
    monkeypatch.setattr(relay_module, "MAX_QUEUED", 5)
    relay = OutboxRelay(rig.database, rig.producer_jetstream)
    stop = asyncio.Event()
    running = asyncio.create_task(relay.run(stop))
    other_engine = create_engine(database_url)  # another process (or replica) on the same database
    other = Database(other_engine, metadata)
    sent: list[EventEnvelope] = []
    try:
        await _commit_events(rig.database, 2, sent)  # this process's: queued in memory
        await _commit_events(other, 3, sent)  # the relay can only find these in the table
        for _ in range(3):
            await _commit_events(rig.database, 4, sent)  # more than fit in the queue: the table again
        await _wait_for_messages(rig, stream, len(sent))
    finally:
        stop.set()
        await asyncio.wait_for(running, timeout=10)
        await other_engine.dispose()

    stored = [await rig.ops.get_msg(stream, sequence) for sequence in range(1, len(sent) + 1)]
    assert sorted(message.headers["Nats-Msg-Id"] for message in stored if message.headers) == sorted(
        event.event_id for event in sent
    )
    assert (await rig.ops.stream_info(stream)).state.messages == len(sent), "each event stored once"
    async with rig.database.read() as connection:
        unpublished = await connection.scalar(
            sa.select(sa.func.count())
            .select_from(rig.database.outbox)
            .where(rig.database.outbox.c.published_at.is_(None))
        )
    assert unpublished == 0


async def _commit_events(database: Database, count: int, sent: list[EventEnvelope]) -> None:
    async with database.transaction() as unit:
        for _ in range(count):
            event = funds_held(str(uuid.uuid4()), "ledger")
            unit.emit_envelope(event)
            sent.append(event)


async def _wait_for_messages(rig: Rig, stream: str, count: int, timeout_s: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await rig.ops.stream_info(stream)).state.messages < count:
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {count} events published"
        await asyncio.sleep(0.05)


async def test_an_event_on_the_wrong_subject_or_from_the_wrong_producer_is_parked_not_handled(rig: Rig) -> None:
    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        await unit.connection.execute(effects.insert().values(payment_id=event.saga_id))

    consumer = rig.consumer(handler)
    forged = funds_held(str(uuid.uuid4()), "someone-else")  # claims another producer
    await rig.publish(forged)

    await run_until(rig, consumer)

    assert await rig.effects() == []
    dead = await rig.dead_letter("FundsHeld")
    assert dead.headers is not None
    assert dead.headers["Paysaga-Reason"] == (
        f"event claims producer 'someone-else' and type 'FundsHeld' but came on paysaga.events.{rig.producer}.FundsHeld"
    )


async def test_a_deleted_durable_consumer_is_recreated_and_nothing_is_missed(rig: Rig) -> None:
    handled: list[str] = []
    second = asyncio.Event()

    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        handled.append(event.saga_id)
        if len(handled) == 2:
            second.set()

    consumer = rig.consumer(handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        first = funds_held(str(uuid.uuid4()), rig.producer)
        await rig.publish(first)
        await eventually(lambda: _true(bool(handled)), "the first event is handled")
        await rig.ops.delete_consumer(f"{rig.producer.upper()}_EVENTS", consumer.name)
        later = funds_held(str(uuid.uuid4()), rig.producer)
        await rig.publish(later)
        await asyncio.wait_for(second.wait(), timeout=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)

    # The recreated consumer starts from the beginning of the stream; the inbox skips the first.
    assert handled == [first.saga_id, later.saga_id]


async def test_a_consumer_handles_events_one_at_a_time_on_one_open_pull_request_and_asks_again_after_it_expires(
    rig: Rig,
) -> None:
    handled: list[str] = []

    async def handler(unit: UnitOfWork, event: EventEnvelope) -> None:
        handled.append(event.saga_id)

    consumer = rig.consumer(handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    stream = f"{rig.producer.upper()}_EVENTS"
    try:
        sent: list[str] = []
        for _ in range(4):
            event = funds_held(str(uuid.uuid4()), rig.producer)
            sent.append(event.saga_id)
            await rig.publish(event)
            await eventually(lambda: _true(len(handled) == len(sent)), f"event {len(sent)} is handled")
            info = await rig.ops.consumer_info(stream, consumer.name)
            assert info.num_waiting == 1  # the same request waits on: not one more per batch
        # Past its expiry the server ends the request, and the consumer asks again.
        await asyncio.sleep(pulls.PULL_EXPIRES_S * 2.5)
        event = funds_held(str(uuid.uuid4()), rig.producer)
        sent.append(event.saga_id)
        await rig.publish(event)
        await eventually(lambda: _true(len(handled) == len(sent)), "the event after the expiry is handled")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert handled == sent


async def _true(value: bool) -> bool:
    return value


async def test_dead_letters_never_expire_while_events_keep_a_week(rig: Rig) -> None:
    events, dead_letters = streams.owned_streams(rig.service)

    assert (await rig.ops.stream_info(dead_letters.name)).config.max_age == 0
    assert (await rig.ops.stream_info(events.name)).config.max_age == windows.STREAM_MAX_AGE_S
