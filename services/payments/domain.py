"""The payment state machine and the threshold rules. Pure code, no I/O.

    PENDING -> FUNDS_HELD -> STOCK_RESERVED -> COMPLETED -> REFUNDING -> REFUNDED
       |            |              |
       +------------+--------------+--> FAILED      (hold refused, or stock refused and the hold released)
       +------------+--------------+--> CANCELLING  (client cancel, or the saga deadline passed)
                                          |--> CANCELLED   (client cancel, once the ledger has undone its part)
                                          |--> FAILED      (deadline passed, once the ledger has undone its part)
    (a request that breaks a rule)    --> REJECTED

Events from the ledger and inventory arrive on different streams, so in any order: the in-flight
statuses only ever move forward, and an event that no longer applies changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from enum import StrEnum

from google.protobuf.message import Message

from paysaga.core import eventing
from paysaga.core.errors import FailedPrecondition
from paysaga.events.v1 import events_pb2


class Status(StrEnum):
    PENDING = "PENDING"
    FUNDS_HELD = "FUNDS_HELD"
    STOCK_RESERVED = "STOCK_RESERVED"
    CANCELLING = "CANCELLING"
    REFUNDING = "REFUNDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    REFUNDED = "REFUNDED"


IN_FLIGHT = (Status.PENDING, Status.FUNDS_HELD, Status.STOCK_RESERVED)
TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.REJECTED, Status.REFUNDED})
PROGRESS = {status: rank for rank, status in enumerate(IN_FLIGHT)}


@dataclass(frozen=True)
class PurchaseRequest:
    idempotency_key: str
    payer_account_id: str
    merchant_account_id: str
    sku: str
    quantity: int
    amount_minor: int
    currency: str
    sla_tier: int
    # The client asking (its identity); its idempotency keys are its own.
    requested_by: str = ""

    def fingerprint(self) -> str:
        """Identifies the request's content, to tell a retry from a reuse of the key."""
        fields = (
            self.payer_account_id,
            self.merchant_account_id,
            self.sku,
            self.quantity,
            self.amount_minor,
            self.currency,
            self.sla_tier,
        )
        return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()


@dataclass
class Payment:
    payment_id: str
    request: PurchaseRequest
    status: Status
    reason: str
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deadline_at: dt.datetime
    timed_out: bool = False

    @property
    def tier(self) -> str:
        return tier_name(self.request.sla_tier)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    def _move(self, status: Status, now: dt.datetime, reason: str | None = None) -> None:
        reopening = self.status is Status.COMPLETED and status is Status.REFUNDING
        assert reopening or not self.is_terminal, f"payment {self.payment_id} already ended {self.status}"
        self.status = status
        if reason is not None:
            self.reason = reason
        self.version += 1
        self.updated_at = now

    # Progress reported by the ledger and inventory.

    def advance(self, status: Status, now: dt.datetime) -> bool:
        if self.status in IN_FLIGHT and PROGRESS[status] > PROGRESS[self.status]:
            self._move(status, now)
            return True
        return False

    def complete(self, now: dt.datetime) -> Message | None:
        if self.status not in IN_FLIGHT:
            return None  # cancelling: the ledger refunds the capture and says so
        self._move(Status.COMPLETED, now, "")
        return events_pb2.PaymentCompleted(payment_id=self.payment_id)

    def note_failure(self, reason: str, now: dt.datetime) -> bool:
        """A step failed; the payment fails once the ledger has released the hold."""
        if self.status in IN_FLIGHT and self.reason != reason:
            self.reason = reason
            self.version += 1
            self.updated_at = now
            return True
        return False

    def fail(self, reason: str, now: dt.datetime) -> Message | None:
        if self.status is Status.CANCELLING:
            return self.conclude_cancellation(now)
        if self.status not in IN_FLIGHT:
            return None
        self._move(Status.FAILED, now, self.reason or reason)
        return events_pb2.PaymentFailed(payment_id=self.payment_id, reason=self.reason)

    # Cancellation (by the client or the deadline) and refunds.

    def request_cancellation(self, reason: str, now: dt.datetime, *, timed_out: bool = False) -> Message | None:
        if self.status is Status.CANCELLING:
            return None
        if self.status not in IN_FLIGHT:
            raise FailedPrecondition(
                f"payment {self.payment_id} is {self.status} and can no longer be cancelled"
                + ("; refund it instead" if self.status is Status.COMPLETED else "")
            )
        self.timed_out = timed_out
        self._move(Status.CANCELLING, now, reason)
        return events_pb2.PaymentCancellationRequested(payment_id=self.payment_id, reason=reason, timed_out=timed_out)

    def conclude_cancellation(self, now: dt.datetime) -> Message | None:
        if self.status is not Status.CANCELLING:
            return None
        if self.timed_out:
            self._move(Status.FAILED, now)
            return events_pb2.PaymentFailed(payment_id=self.payment_id, reason=self.reason)
        self._move(Status.CANCELLED, now)
        return events_pb2.PaymentCancelled(payment_id=self.payment_id, reason=self.reason)

    def request_refund(self, reason: str, now: dt.datetime) -> Message | None:
        if self.status in (Status.REFUNDING, Status.REFUNDED):
            return None
        if self.status is not Status.COMPLETED:
            raise FailedPrecondition(
                f"payment {self.payment_id} is {self.status}; only COMPLETED payments can be refunded"
            )
        self._move(Status.REFUNDING, now, reason)
        return events_pb2.PaymentRefundRequested(payment_id=self.payment_id, reason=reason)

    def refund_refused(self, reason: str, now: dt.datetime) -> Message | None:
        """The ledger could not give the money back: nothing moved, so the sale stands. A refund
        ends COMPLETED again with the refusal as its reason (and may be asked for again); a
        cancellation that came after the capture ends COMPLETED too."""
        if self.status is Status.REFUNDING:
            self._move(Status.COMPLETED, now, f"refund refused: {reason}")
            return None  # PaymentCompleted was emitted when it first completed
        if self.status is Status.CANCELLING:
            self._move(Status.COMPLETED, now, f"cancellation refused, the purchase went through: {reason}")
            return events_pb2.PaymentCompleted(payment_id=self.payment_id)
        return None

    def conclude_refund(self, now: dt.datetime) -> Message | None:
        if self.status is Status.CANCELLING:
            return self.conclude_cancellation(now)
        if self.status is not Status.REFUNDING:
            return None
        self._move(Status.REFUNDED, now)
        return events_pb2.PaymentRefunded(payment_id=self.payment_id)


@dataclass(frozen=True)
class PaymentLimits:
    """The saga deadline and the threshold rules (services/payments/config.py reads them)."""

    saga_timeout_s: float = 30.0
    max_amount_minor: int = 1_000_000
    velocity_limit: int = 20
    velocity_window_s: float = 60.0
    # Purchases not yet ended above which new ones are refused (RESOURCE_EXHAUSTED) rather than
    # queued until they time out.
    max_in_flight: int = 500
    # Under overload the tiers are refused in turn: a purchase of a tier is taken on while fewer
    # purchases are in flight than its share of max_in_flight (standard first, critical last).
    admission_shares: tuple[tuple[str, float], ...] = (("standard", 0.7), ("priority", 0.9), ("critical", 1.0))
    # WatchPayment: streams one client may hold open on one process, and how long one may last.
    max_watches_per_client: int = 32
    watch_max_s: float = 600.0


# Most lenient first, as paysaga.payments.v1.SlaTier numbers them (1, 2, 3).
SLA_TIERS = tuple(reversed(eventing.SLA_TIERS))


def tier_name(sla_tier: int) -> str:
    """ "standard", "priority" or "critical" for an SlaTier number (unspecified is standard)."""
    return SLA_TIERS[max(sla_tier, 1) - 1]


def admission_limits(rules: PaymentLimits) -> dict[str, int]:
    """How many purchases may be in flight when one of each tier is taken on (at least one)."""
    shares = dict(rules.admission_shares)
    return {tier: max(1, int(rules.max_in_flight * shares.get(tier, 1.0))) for tier in SLA_TIERS}


def rule_violation(
    request: PurchaseRequest, rules: PaymentLimits, recent_payments_of_payer: int
) -> tuple[str, str] | None:
    """(rule, reason) if the request breaks a threshold rule, else None."""
    if request.amount_minor > rules.max_amount_minor:
        return "amount_cap", f"amount {request.amount_minor} exceeds the cap of {rules.max_amount_minor} per payment"
    if recent_payments_of_payer >= rules.velocity_limit:
        return (
            "payer_velocity",
            f"payer made {recent_payments_of_payer} payments in the last {rules.velocity_window_s:g} s "
            f"(limit {rules.velocity_limit})",
        )
    return None
