"""Lanes: the durable consumer each event travels through, so that a backlog of one kind of work
never holds up another.

Every event of a purchase carries the merchant's SLA tier (``EventEnvelope.sla_tier``) and is
published under ``paysaga.events.<producer>.<tier>.<EventType>``. A service reads each producer it
consumes through one durable consumer per lane:

- ``compensation``: releases, cancellations, refunds and their results, of every tier; served
  first. It also carries the few events outside any purchase (an account opened, an item added),
  which are rare and which a new purchase may be waiting for;
- ``critical``, ``priority``, ``standard``: the forward steps of purchases of that tier.

Events without a tier (written before lanes existed, or by a producer not yet upgraded) keep the
old subject ``paysaga.events.<producer>.<EventType>``: the compensation lane takes those of its
kinds, the standard lane the rest, so nothing stored before an upgrade is left unread.

Lanes are not ordered with each other: a compensation may overtake the step it undoes, and every
handler accepts events in any order (the saga simulator explores it).
"""

from __future__ import annotations

from collections.abc import Iterable

from paysaga.core.eventing import PRODUCED_BY, SLA_TIERS, event_subject

TIERS = SLA_TIERS
COMPENSATION = "compensation"
LANES = (COMPENSATION, *TIERS)
# Undoing a step, or its result. StockReservationFailed is where a rollback starts: the ledger
# releases the hold on it.
COMPENSATION_EVENTS = frozenset(
    {
        "StockReservationFailed",
        "PaymentCancellationRequested",
        "PaymentRefundRequested",
        "FundsReleased",
        "FundsRefunded",
        "FundsRefundFailed",
        "StockReleased",
        "StockRestocked",
        "PaymentCancelled",
        "PaymentDeclined",
        "PaymentRefunded",
    }
)
# Events outside any purchase: they have no tier.
NOTICES = frozenset({"AccountOpened", "ItemAdded", "TokensRevoked", "TrafficSpikeDetected"})
_KNOWN_EVENTS = frozenset(event for events in PRODUCED_BY.values() for event in events)
assert COMPENSATION_EVENTS | NOTICES <= _KNOWN_EVENTS, "a lane names an event nobody produces"


def lane_of(event_type: str, tier: str) -> str:
    """The lane an event travels on."""
    if event_type in COMPENSATION_EVENTS or event_type in NOTICES:
        return COMPENSATION
    return tier or "standard"


def lane_subjects(producer: str, lane: str, event_types: Iterable[str]) -> list[str]:
    """The subjects of these event types that travel on lane: a durable consumer's filter."""
    if lane not in LANES:
        raise ValueError(f"unknown lane {lane!r}: one of {', '.join(LANES)}")
    subjects: list[str] = []
    for event_type in event_types:
        if lane == COMPENSATION and event_type in COMPENSATION_EVENTS:
            subjects += [event_subject(producer, event_type, "*"), event_subject(producer, event_type)]
        elif lane == COMPENSATION and event_type in NOTICES:
            subjects.append(event_subject(producer, event_type))
        elif lane != COMPENSATION and event_type not in COMPENSATION_EVENTS | NOTICES:
            subjects.append(event_subject(producer, event_type, lane))
            if lane == "standard":
                subjects.append(event_subject(producer, event_type))  # stored before lanes
    return subjects
