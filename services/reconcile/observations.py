"""What the sources said, gathered for one run: the streams' events, the databases' records, the
dead letters and the settlement file. Pure data; paysaga.services.reconcile.sources fills it in."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from paysaga.core import lanes
from paysaga.core.eventing import PRODUCED_BY
from paysaga.core.reconciliation import EntryRecord, HoldRecord, PaymentRecord, ReservationRecord
from services.reconcile.domain import Window

# The events of a purchase: what the three services of the saga emit, but their notices
# (accounts opened, items added, spikes), which belong to no payment.
PURCHASE_EVENTS = (
    frozenset(event for producer in ("payments", "ledger", "inventory") for event in PRODUCED_BY[producer])
    - lanes.NOTICES
)
SAGA_STARTS = frozenset({"PaymentRequested", "PaymentRejected"})


@dataclass(frozen=True, slots=True)
class EventFact:
    """One event of a purchase as stored in its producer's stream, and what it says."""

    stream: str
    sequence: int
    event_id: str
    event_type: str
    producer: str
    saga_id: str
    at: dt.datetime
    amount_minor: int | None = None
    currency: str = ""
    sku: str = ""
    quantity: int | None = None
    # FundsReleased without one released nothing (no hold had been placed).
    hold_id: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stream: str
    sequence: int
    subject: str
    at: dt.datetime
    reason: str
    saga_id: str
    event_type: str


@dataclass(frozen=True, slots=True)
class SettlementLine:
    """One line of the bank's settlement file (paysaga.services.reconcile.settlement)."""

    line_number: int
    reference: str
    type: str
    amount_minor: int
    currency: str
    value_date: dt.date


@dataclass
class Observations:
    window: Window
    payments: Sequence[PaymentRecord] = ()
    holds: Sequence[HoldRecord] = ()
    reservations: Sequence[ReservationRecord] = ()
    entries: Sequence[EntryRecord] = ()
    events: Sequence[EventFact] = ()
    dead_letters: Sequence[DeadLetter] = ()
    # None: no settlement file was given.
    settlement: Sequence[SettlementLine] | None = None
    # Payments created from the window's end on: their records and events belong to the next run.
    out_of_range: frozenset[str] = frozenset()


@dataclass
class Saga:
    """Everything the sources say about one payment."""

    payment_id: str
    payment: PaymentRecord | None = None
    hold: HoldRecord | None = None
    reservation: ReservationRecord | None = None
    events: list[EventFact] = field(default_factory=list)
    entries: list[EntryRecord] = field(default_factory=list)

    def of_type(self, *event_types: str) -> list[EventFact]:
        return [event for event in self.events if event.event_type in event_types]

    def by(self, producer: str) -> list[EventFact]:
        return [event for event in self.events if event.producer == producer]

    def recorded_status(self, service: str) -> str | None:
        """The status of the service's record of this payment; None when it has none."""
        record = {"payments": self.payment, "ledger": self.hold, "inventory": self.reservation}[service]
        return None if record is None else record.status

    def entries_of(self, kind: str) -> list[EntryRecord]:
        return [entry for entry in self.entries if entry.kind == kind]

    @property
    def started_at(self) -> dt.datetime:
        if self.payment is not None:
            return self.payment.created_at
        return min(self._times())

    @property
    def last_activity(self) -> dt.datetime:
        return max(self._times())

    def _times(self) -> list[dt.datetime]:
        times = [event.at for event in self.events] + [entry.created_at for entry in self.entries]
        times += [record.updated_at for record in (self.payment, self.hold, self.reservation) if record is not None]
        return times


def sagas_of(observed: Observations) -> dict[str, Saga]:
    """The run's payments, each with what every source says of it: those payments' records hold
    (created in range, older ones not ended, older ones something in range names), and any other
    that a record or event in range names, unless it was created after the window."""
    found: dict[str, Saga] = {}
    skip = observed.out_of_range

    def saga(payment_id: str) -> Saga | None:
        if payment_id in skip or not payment_id:
            return None
        return found.setdefault(payment_id, Saga(payment_id))

    for payment in observed.payments:
        found[payment.payment_id] = Saga(payment.payment_id, payment=payment)
    events = defaultdict(list)
    for event in observed.events:
        if event.event_type in PURCHASE_EVENTS:
            events[event.saga_id].append(event)
    for payment_id, saga_events in events.items():
        if (target := saga(payment_id)) is not None:
            target.events = sorted(saga_events, key=lambda event: (event.at, event.stream, event.sequence))
    for hold in observed.holds:
        if (target := saga(hold.payment_id)) is not None:
            target.hold = hold
    for reservation in observed.reservations:
        if (target := saga(reservation.payment_id)) is not None:
            target.reservation = reservation
    for entry in observed.entries:
        if entry.saga_id and (target := saga(entry.saga_id)) is not None:
            target.entries.append(entry)
    return found
