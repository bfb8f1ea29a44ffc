"""Building and reading event envelopes (paysaga.events.v1.EventEnvelope)."""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf.message import DecodeError, Message

from paysaga.events.v1 import events_pb2

EventEnvelope = events_pb2.EventEnvelope
# A service publishes its events under paysaga.events.<service>.<tier>.<EventType> (or without the
# tier, outside a purchase: paysaga.core.lanes) and parks the ones it cannot handle under
# paysaga.deadletter.<service>.<EventType>.
EVENTS_SUBJECT_ROOT = "paysaga.events"
# Who emits each event: a service subscribes to the producers of the events it handles, and may
# publish only its own (paysaga.runtime.messaging.consumer.subscriptions_for, ops.cluster.natsconf).
PRODUCED_BY: dict[str, tuple[str, ...]] = {
    "payments": (
        "PaymentRequested",
        "PaymentRejected",
        "PaymentCancellationRequested",
        "PaymentRefundRequested",
        "PaymentCompleted",
        "PaymentFailed",
        "PaymentCancelled",
        "PaymentRefunded",
        "TrafficSpikeDetected",
        "PaymentApproved",
        "PaymentDeclined",
    ),
    "ledger": (
        "FundsHeld",
        "FundsHeldForReview",
        "FundsHoldFailed",
        "FundsCaptured",
        "FundsReleased",
        "FundsRefunded",
        "FundsRefundFailed",
        "AccountOpened",
    ),
    "inventory": (
        "StockReserved",
        "StockReservationFailed",
        "StockCommitted",
        "StockReleased",
        "StockRestocked",
        "ItemAdded",
    ),
    "auth": ("TokensRevoked",),
    "reconcile": ("ReconciliationCompleted", "ReconciliationMismatchFound"),
}
PRODUCER_OF: dict[str, str] = {event: producer for producer, events in PRODUCED_BY.items() for event in events}
DEAD_LETTER_SUBJECT_ROOT = "paysaga.deadletter"
# A purchase's service level, strictest first: its events travel on its tier's lane (paysaga.core.lanes).
SLA_TIERS = ("critical", "priority", "standard")

# Payload message name (e.g. "FundsHeld") -> the envelope's oneof field ("funds_held").
PAYLOAD_FIELDS: dict[str, str] = {
    field.message_type.name: field.name
    for field in EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"].fields
    if field.message_type is not None
}


def new_event(
    *,
    producer: str,
    saga_id: str,
    payload: Message,
    causation_id: str = "",
    sla_tier: str = "",
    now: dt.datetime | None = None,
) -> EventEnvelope:
    """A new envelope around payload, with a fresh event id chosen by the producer."""
    if sla_tier and sla_tier not in SLA_TIERS:
        raise ValueError(f"unknown SLA tier {sla_tier!r}: one of {', '.join(SLA_TIERS)}")
    event_type = payload.DESCRIPTOR.name
    envelope = EventEnvelope(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        saga_id=saga_id,
        causation_id=causation_id,
        producer=producer,
        sla_tier=sla_tier,
    )
    envelope.occurred_at.FromDatetime(now or dt.datetime.now(dt.UTC))
    getattr(envelope, PAYLOAD_FIELDS[event_type]).CopyFrom(payload)
    return envelope


def subject_of(envelope: EventEnvelope) -> str:
    return event_subject(envelope.producer, envelope.event_type, envelope.sla_tier)


def event_subject(producer: str, event_type: str, tier: str = "") -> str:
    """paysaga.events.<producer>.<tier>.<EventType>, or without the tier for an event outside a
    purchase (or one written before lanes)."""
    if tier:
        return f"{EVENTS_SUBJECT_ROOT}.{producer}.{tier}.{event_type}"
    return f"{EVENTS_SUBJECT_ROOT}.{producer}.{event_type}"


def payload_of(envelope: EventEnvelope) -> Message:
    field = envelope.WhichOneof("payload")
    if field is None:
        raise ValueError(f"event {envelope.event_id} has no payload")
    payload: Message = getattr(envelope, field)
    return payload


def parse(data: bytes) -> EventEnvelope:
    """Decode and check an envelope; ValueError if it can never be handled."""
    try:
        envelope = EventEnvelope.FromString(data)
    except DecodeError as error:
        raise ValueError(f"not an event envelope: {error}") from None
    if not envelope.event_id or not envelope.saga_id:
        raise ValueError("event without event_id or saga_id")
    if PAYLOAD_FIELDS.get(envelope.event_type) != envelope.WhichOneof("payload"):
        raise ValueError(f"event_type {envelope.event_type!r} does not match its payload")
    if envelope.sla_tier and envelope.sla_tier not in SLA_TIERS:
        raise ValueError(f"event with unknown sla_tier {envelope.sla_tier!r}")
    return envelope
