"""One fact, one place: which events each service reacts to comes from its handler table; the
subscriptions and the NATS permissions follow from it."""

from __future__ import annotations

from paysaga.core.eventing import PAYLOAD_FIELDS, PRODUCED_BY, PRODUCER_OF
from paysaga.ops.cluster import natsconf
from paysaga.runtime.messaging.consumer import Subscription, subscriptions_for
from services.inventory import bootstrap as inventory
from services.ledger import bootstrap as ledger
from services.payments import bootstrap as payments


def test_every_event_of_the_envelope_has_exactly_one_producer() -> None:
    listed = [event for events in PRODUCED_BY.values() for event in events]

    assert sorted(listed) == sorted(PAYLOAD_FIELDS)
    assert len(listed) == len(set(listed))


def test_subscriptions_are_the_producers_of_the_handled_events() -> None:
    async def handler(*_: object) -> None:
        pass

    subscriptions = subscriptions_for({"StockReserved": handler, "FundsHeld": handler, "FundsCaptured": handler})

    # A lane per tier for these forward steps; no compensation lane, as none of them is one.
    assert subscriptions == tuple(
        Subscription(producer, types, lane)
        for producer, types in (("inventory", ("StockReserved",)), ("ledger", ("FundsHeld", "FundsCaptured")))
        for lane in ("critical", "priority", "standard")
    )


def test_no_service_consumes_its_own_events_and_nats_lets_each_read_what_it_consumes() -> None:
    for name, bootstrap in (("payments", payments), ("inventory", inventory), ("ledger", ledger)):
        producers = tuple(subscription.producer for subscription in bootstrap.SUBSCRIPTIONS)
        assert name not in producers
        assert natsconf.CONSUMES[name] == bootstrap.SUBSCRIPTIONS
        handled = {event for subscription in bootstrap.SUBSCRIPTIONS for event in subscription.event_types}
        assert all(PRODUCER_OF[event] != name for event in handled)


def test_the_reconciliation_may_read_only_through_its_own_consumer_and_publish_only_its_own_events() -> None:
    user = next(user for user in natsconf.users() if user.identity == "spiffe://paysaga/reconcile")
    consumer_calls = [subject for subject in user.publish if subject.startswith("$JS.API.CONSUMER.")]
    # A create naming no consumer (or any) could update a service's durable consumer.
    assert len(consumer_calls) == 6 * 5
    assert all(subject.endswith((".reconcile", ".reconcile.>")) for subject in consumer_calls), consumer_calls
    events = [subject for subject in user.publish if not subject.startswith("$JS.")]
    assert events == ["paysaga.events.reconcile.>"]
    assert not any(subject.startswith(("$JS.FC", "$JS.ACK")) for subject in user.publish)
    assert user.subscribe == ("_INBOX.reconcile.>",)
