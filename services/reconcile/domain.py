"""What the reconciliation looks for, and the run's window. Pure code, no I/O.

Every mismatch has a kind; each kind has a class (what sort of trouble) and a priority (1: money
may be wrong or lost, look today; 2: something is stuck or unannounced, look soon; 3: tidy-up).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    UNBALANCED_ENTRY = "unbalanced_entry"
    DUPLICATE_EFFECT = "duplicate_effect"
    AMOUNT_DIFFERS = "amount_differs"
    OUTCOME_DISAGREES = "outcome_disagrees"
    MISSING_IN_DATABASE = "missing_in_database"
    SETTLEMENT_EXTRA = "settlement_extra"
    SETTLEMENT_DIFFERS = "settlement_differs"
    MISSING_IN_STREAM = "missing_in_stream"
    ORPHAN_HOLD = "orphan_hold"
    STUCK_SAGA = "stuck_saga"
    SETTLEMENT_MISSING = "settlement_missing"
    DEAD_LETTER = "dead_letter"
    ORPHAN_RESERVATION = "orphan_reservation"


class MismatchClass(StrEnum):
    INTEGRITY = "integrity"  # the records contradict themselves
    DISAGREEMENT = "disagreement"  # two services disagree about one payment
    MISSING = "missing"  # a fact one source has and another lacks
    STUCK = "stuck"  # something that should have ended has not
    SETTLEMENT = "settlement"  # the bank's file and our records differ


@dataclass(frozen=True)
class KindInfo:
    mismatch_class: MismatchClass
    priority: int
    title: str


KINDS: dict[Kind, KindInfo] = {
    Kind.UNBALANCED_ENTRY: KindInfo(MismatchClass.INTEGRITY, 1, "journal entry does not balance"),
    Kind.DUPLICATE_EFFECT: KindInfo(MismatchClass.INTEGRITY, 1, "captured or refunded more than once"),
    Kind.AMOUNT_DIFFERS: KindInfo(MismatchClass.DISAGREEMENT, 1, "amount, currency or quantity differ"),
    Kind.OUTCOME_DISAGREES: KindInfo(MismatchClass.DISAGREEMENT, 1, "services disagree on the outcome"),
    Kind.MISSING_IN_DATABASE: KindInfo(MismatchClass.MISSING, 1, "in the stream, not in the database"),
    Kind.SETTLEMENT_EXTRA: KindInfo(MismatchClass.SETTLEMENT, 1, "settled by the bank, unknown to us"),
    Kind.SETTLEMENT_DIFFERS: KindInfo(MismatchClass.SETTLEMENT, 1, "settled with another amount or date"),
    Kind.MISSING_IN_STREAM: KindInfo(MismatchClass.MISSING, 2, "in the database, not in the stream"),
    Kind.ORPHAN_HOLD: KindInfo(MismatchClass.STUCK, 2, "funds held for a payment that has ended"),
    Kind.STUCK_SAGA: KindInfo(MismatchClass.STUCK, 2, "payment not ended past its deadline"),
    Kind.SETTLEMENT_MISSING: KindInfo(MismatchClass.SETTLEMENT, 2, "captured or refunded, not settled"),
    Kind.DEAD_LETTER: KindInfo(MismatchClass.STUCK, 2, "event parked in a dead-letter stream"),
    Kind.ORPHAN_RESERVATION: KindInfo(MismatchClass.STUCK, 3, "stock reserved for a payment that has ended"),
}
KIND_ORDER = {kind: index for index, kind in enumerate(Kind)}


class Verdict(StrEnum):
    RECONCILED = "reconciled"
    MISMATCHES = "mismatches"
    INCOMPLETE = "incomplete"


EXIT_CODES = {Verdict.RECONCILED: 0, Verdict.MISMATCHES: 1, Verdict.INCOMPLETE: 2}


@dataclass(frozen=True)
class Window:
    """The run's window [start, end) and the look-back before it.

    Payments created from lookback_start on are checked: the look-back catches what was still in
    flight at the previous run, or changed late. A payment whose last activity is within settle
    of end is still in flight: counted, not judged (the next run judges it).
    """

    end: dt.datetime
    length: dt.timedelta = dt.timedelta(hours=24)
    lookback: dt.timedelta = dt.timedelta(hours=48)
    settle: dt.timedelta = dt.timedelta(minutes=5)

    def __post_init__(self) -> None:
        if self.end.tzinfo is None:
            raise ValueError("the window's end must carry a time zone")
        if self.length <= dt.timedelta(0) or self.lookback < dt.timedelta(0) or self.settle < dt.timedelta(0):
            raise ValueError("the window's length must be positive; its look-back and settle time not negative")

    @property
    def start(self) -> dt.datetime:
        return self.end - self.length

    @property
    def lookback_start(self) -> dt.datetime:
        return self.start - self.lookback


@dataclass(frozen=True)
class Mismatch:
    kind: Kind
    # The payment it concerns ("" when none does, e.g. an undecodable dead letter).
    payment_id: str
    # Where it was seen: a service, "settlement", or "" when it is between services.
    source: str
    # When: the payment's creation, the entry's, the event's or the settlement line's date.
    at: dt.datetime
    detail: str
    # What identifies it beyond the payment: an entry id, a stream sequence, a settlement line.
    reference: str = ""
    # The payment was created in the look-back, before the window.
    in_lookback: bool = False

    @property
    def info(self) -> KindInfo:
        return KINDS[self.kind]

    @property
    def mismatch_id(self) -> str:
        """The same on every run that finds it, so a person (or a ticket) can follow it."""
        key = "|".join((self.kind, self.payment_id, self.source, self.reference))
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def sort_key(self) -> tuple[int, int, str, str, str, str, str]:
        return (
            self.info.priority,
            KIND_ORDER[self.kind],
            self.at.isoformat(),
            self.payment_id,
            self.source,
            self.reference,
            self.detail,
        )
