"""The checks of one payment: each service's stream against its database, the services against
each other, and what must have ended. Pure code, no I/O.

Each service's part of a purchase is a small state machine. Its stream says which state it
reached (the furthest state any of its events announced), its database which state it is in;
the two must agree. Then the three services must agree on the outcome and on the amounts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from services.reconcile.domain import Kind, Mismatch, Window
from services.reconcile.observations import EventFact, Saga

NOTHING = ("", 0)
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "REJECTED", "REFUNDED"})
ENDED_WITHOUT_SALE = frozenset({"FAILED", "CANCELLED", "REJECTED"})


@dataclass(frozen=True)
class Machine:
    """A service's states as (name, rank): a later state has a higher rank."""

    service: str
    by_event: Mapping[str, tuple[str, int]]
    by_status: Mapping[str, tuple[str, int]]
    # The events each state stands on: one of each group must be in the stream.
    requires: Mapping[str, tuple[tuple[str, ...], ...]]

    def from_stream(self, events: list[EventFact]) -> tuple[tuple[str, int], EventFact | None]:
        best, cause = NOTHING, None
        for event in events:
            state = self.by_event.get(event.event_type)
            if event.event_type == "FundsReleased" and (not event.hold_id or best[1] == 0):
                state = NOTHING  # released nothing: no hold had been placed (or only a marker)
            if state is not None and state[1] >= best[1]:
                best, cause = state, event
        return best, cause

    def lacking(self, state: str, events: list[EventFact]) -> list[str]:
        """The events state stands on that the stream does not have (the first of each group)."""
        present = {event.event_type for event in events}
        return [group[0] for group in self.requires.get(state, ()) if not present.intersection(group)]

    def from_status(self, status: str | None) -> tuple[str, int]:
        if status is None:
            return NOTHING
        return self.by_status.get(status, (status, 0))


REQUESTED = ("REQUESTED", 1)
PAYMENTS = Machine(
    "payments",
    {
        "PaymentRequested": REQUESTED,
        "PaymentCompleted": ("COMPLETED", 2),
        "PaymentFailed": ("FAILED", 2),
        "PaymentCancelled": ("CANCELLED", 2),
        "PaymentRejected": ("REJECTED", 2),
        "PaymentDeclined": ("REJECTED", 2),
        "PaymentRefunded": ("REFUNDED", 3),
    },
    {
        **dict.fromkeys(("UNDER_REVIEW", "PENDING", "FUNDS_HELD", "STOCK_RESERVED", "CANCELLING"), REQUESTED),
        # A refund under way: the sale was announced; its end is not yet.
        "REFUNDING": ("COMPLETED", 2),
        **{status: (status, 2) for status in ("COMPLETED", "FAILED", "CANCELLED", "REJECTED")},
        "REFUNDED": ("REFUNDED", 3),
    },
    {
        "REQUESTED": (("PaymentRequested", "PaymentRejected"),),
        "COMPLETED": (("PaymentRequested",), ("PaymentCompleted",)),
        "FAILED": (("PaymentRequested",), ("PaymentFailed",)),
        "CANCELLED": (("PaymentRequested",), ("PaymentCancelled",)),
        "REJECTED": (("PaymentRejected", "PaymentDeclined"),),
        "REFUNDED": (("PaymentRequested",), ("PaymentCompleted",), ("PaymentRefunded",)),
    },
)
LEDGER = Machine(
    "ledger",
    {
        "FundsHeld": ("HELD", 1),
        "FundsHeldForReview": ("HELD", 1),
        "FundsHoldFailed": NOTHING,
        "FundsCaptured": ("CAPTURED", 2),
        "FundsReleased": ("RELEASED", 2),
        "FundsRefunded": ("REFUNDED", 3),
    },
    # CANCELLED and APPROVED are markers: what the ledger knew before any hold.
    {"HELD": ("HELD", 1), "CAPTURED": ("CAPTURED", 2), "RELEASED": ("RELEASED", 2), "REFUNDED": ("REFUNDED", 3)}
    | dict.fromkeys(("CANCELLED", "APPROVED"), NOTHING),
    {
        "HELD": (("FundsHeld", "FundsHeldForReview"),),
        "CAPTURED": (("FundsHeld",), ("FundsCaptured",)),
        "RELEASED": (("FundsHeld", "FundsHeldForReview"), ("FundsReleased",)),
        "REFUNDED": (("FundsHeld",), ("FundsCaptured",), ("FundsRefunded",)),
    },
)
INVENTORY = Machine(
    "inventory",
    {
        "StockReserved": ("RESERVED", 1),
        "StockReservationFailed": NOTHING,
        "StockCommitted": ("COMMITTED", 2),
        "StockReleased": ("RELEASED", 2),
        "StockRestocked": ("RESTOCKED", 3),
    },
    # CANCELLED is a tombstone: nothing was (or will be) reserved.
    {
        "RESERVED": ("RESERVED", 1),
        "COMMITTED": ("COMMITTED", 2),
        "RELEASED": ("RELEASED", 2),
        "RESTOCKED": ("RESTOCKED", 3),
    }
    | {"CANCELLED": NOTHING},
    {
        "RESERVED": (("StockReserved",),),
        "COMMITTED": (("StockReserved",), ("StockCommitted",)),
        "RELEASED": (("StockReserved",), ("StockReleased",)),
        "RESTOCKED": (("StockReserved",), ("StockRestocked",)),
    },
)
MACHINES = (PAYMENTS, LEDGER, INVENTORY)
# What the ledger and inventory end in, for each way a payment ends.
EXPECTED: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "COMPLETED": (frozenset({"CAPTURED"}), frozenset({"COMMITTED"})),
    "REFUNDED": (frozenset({"REFUNDED"}), frozenset({"RESTOCKED"})),
    **dict.fromkeys(
        ENDED_WITHOUT_SALE, (frozenset({"", "RELEASED", "REFUNDED"}), frozenset({"", "RELEASED", "RESTOCKED"}))
    ),
}


class SagaChecks:
    def __init__(self, saga: Saga, window: Window) -> None:
        self.saga = saga
        self.window = window
        self.at = saga.started_at
        self.in_lookback = self.at < window.start
        # Created before the look-back: its earlier events were not read, only what happened in range.
        self.partial = saga.payment is not None and saga.payment.created_at < window.lookback_start
        self.statuses = {machine.service: self._status(machine) for machine in MACHINES}

    def _status(self, machine: Machine) -> str:
        """What the books say (the database), or, when there is no record, what the stream says."""
        status = self.saga.recorded_status(machine.service)
        if status is not None:
            return machine.from_status(status)[0]
        return machine.from_stream(self.saga.by(machine.service))[0][0]

    def mismatch(self, kind: Kind, source: str, detail: str, reference: str = "") -> Mismatch:
        return Mismatch(kind, self.saga.payment_id, source, self.at, detail, reference, self.in_lookback)

    @property
    def in_flight(self) -> bool:
        """Still moving: its last activity is within the settle time of the window's end."""
        return self.saga.last_activity + self.window.settle > self.window.end

    def all(self) -> Iterator[Mismatch]:
        yield from self.duplicates()
        yield from self.stuck()
        if self.in_flight:
            return
        for machine in MACHINES:
            yield from self.stream_against_database(machine)
        yield from self.amounts()
        yield from self.outcome()

    def stream_against_database(self, machine: Machine) -> Iterator[Mismatch]:
        status = self.saga.recorded_status(machine.service)
        events = self.saga.by(machine.service)
        (streamed, streamed_rank), cause = machine.from_stream(events)
        stored, stored_rank = machine.from_status(status)
        if streamed_rank == 0 and stored_rank == 0:
            return
        if streamed == stored:
            lacking = [] if self.partial else machine.lacking(stored, events)
            if lacking:
                yield self.mismatch(
                    Kind.MISSING_IN_STREAM,
                    machine.service,
                    f"{_owner(machine.service)} stream lacks {', '.join(lacking)}, which {stored} follows",
                    ",".join(lacking),
                )
            return
        record = "no record" if status is None else f"status {status}"
        if stored_rank > streamed_rank:
            if self.partial:
                return  # what announced it may be from before the range

            announced = f"its stream only says {streamed}" if streamed else "its stream has no event of it"
            yield self.mismatch(
                Kind.MISSING_IN_STREAM, machine.service, f"{_owner(machine.service)} database has {record}; {announced}"
            )
            return
        assert cause is not None
        yield self.mismatch(
            Kind.MISSING_IN_DATABASE,
            machine.service,
            f"{_owner(machine.service)} stream says {streamed} ({cause.event_type}, {cause.stream} #{cause.sequence}); "
            f"its database has {record}",
            cause.event_id,
        )

    def amounts(self) -> Iterator[Mismatch]:
        money: dict[tuple[int, str], list[str]] = {}
        goods: dict[tuple[str, int], list[str]] = {}
        saga = self.saga
        if saga.payment is not None:
            money.setdefault((saga.payment.amount_minor, saga.payment.currency), []).append("payments")
            goods.setdefault((saga.payment.sku, saga.payment.quantity), []).append("payments")
        if saga.hold is not None and saga.hold.hold_id and saga.hold.currency:
            money.setdefault((saga.hold.amount_minor, saga.hold.currency), []).append("ledger hold")
        if saga.reservation is not None and saga.reservation.sku:
            goods.setdefault((saga.reservation.sku, saga.reservation.quantity), []).append("inventory reservation")
        for entry in saga.entries:
            money.setdefault((entry.amount_minor, entry.currency), []).append(f"ledger {entry.kind.lower()} entry")
        for event in saga.events:
            if event.amount_minor is not None:
                money.setdefault((event.amount_minor, event.currency), []).append(event.event_type)
            if event.quantity is not None:
                goods.setdefault((event.sku, event.quantity), []).append(event.event_type)
        if len(money) > 1:
            shown = "; ".join(
                f"{amount} {currency} ({', '.join(dict.fromkeys(seen))})"
                for (amount, currency), seen in sorted(money.items())
            )
            yield self.mismatch(Kind.AMOUNT_DIFFERS, "", f"amounts differ: {shown}", "amount")
        if len(goods) > 1:
            shown = "; ".join(
                f"{quantity} x {sku} ({', '.join(dict.fromkeys(seen))})"
                for (sku, quantity), seen in sorted(goods.items())
            )
            yield self.mismatch(Kind.AMOUNT_DIFFERS, "", f"quantities differ: {shown}", "quantity")

    def outcome(self) -> Iterator[Mismatch]:
        payment, ledger, inventory = (self.statuses[service] for service in ("payments", "ledger", "inventory"))
        ended = payment in TERMINAL or (not payment and self.saga.payment is None)
        if not ended:
            return
        unknown = "unknown to payments"
        if ledger == "HELD":
            yield self.mismatch(
                Kind.ORPHAN_HOLD, "ledger", f"the ledger still holds funds; the payment is {payment or unknown}"
            )
        if inventory == "RESERVED":
            yield self.mismatch(
                Kind.ORPHAN_RESERVATION,
                "inventory",
                f"inventory still reserves stock; the payment is {payment or unknown}",
            )
        if not payment:
            moved = [
                f"{name} says {state}"
                for name, state in (("the ledger", ledger), ("inventory", inventory))
                if state not in ("", "HELD", "RESERVED")
            ]
            if moved:
                yield self.mismatch(Kind.OUTCOME_DISAGREES, "", "payments has no such payment; " + ", ".join(moved))
            return
        ledger_ends, inventory_ends = EXPECTED[payment]
        wrong = []
        if ledger not in ledger_ends and ledger != "HELD":
            wrong.append(f"the ledger says {ledger or 'nothing held'}")
        if inventory not in inventory_ends and inventory != "RESERVED":
            wrong.append(f"inventory says {inventory or 'nothing reserved'}")
        if wrong:
            yield self.mismatch(Kind.OUTCOME_DISAGREES, "", f"payments says {payment}; " + ", ".join(wrong))

    def duplicates(self) -> Iterator[Mismatch]:
        for event_type, effect in (("FundsCaptured", "captured"), ("FundsRefunded", "refunded")):
            announced = {event.event_id for event in self.saga.of_type(event_type)}
            if len(announced) > 1:
                yield self.mismatch(
                    Kind.DUPLICATE_EFFECT,
                    "ledger",
                    f"{effect} {len(announced)} times in the stream ({event_type})",
                    event_type,
                )
        for kind in ("CAPTURE", "REFUND"):
            entries = self.saga.entries_of(kind)
            if len(entries) > 1:
                ids = ", ".join(sorted(entry.entry_id for entry in entries))
                yield self.mismatch(
                    Kind.DUPLICATE_EFFECT, "ledger", f"{len(entries)} {kind} journal entries: {ids}", kind
                )

    def stuck(self) -> Iterator[Mismatch]:
        payment = self.saga.payment
        if payment is None or payment.status in TERMINAL:
            return
        # A refund or cancellation asked for after the deadline has until its own settle time.
        due = max(payment.deadline_at, payment.updated_at) + self.window.settle
        if due <= self.window.end:
            yield self.mismatch(
                Kind.STUCK_SAGA,
                "payments",
                f"{payment.status} since {_shown(payment.updated_at)}, past its deadline {_shown(payment.deadline_at)}",
            )


def _owner(service: str) -> str:
    return f"{service}'" if service.endswith("s") else f"{service}'s"


def _shown(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
