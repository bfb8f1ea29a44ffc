"""The payment state machine and how the fraud rules' hits make a decision. Pure code, no I/O.

    PENDING -> FUNDS_HELD -> STOCK_RESERVED -> COMPLETED -> REFUNDING -> REFUNDED
       |            |              |
       +------------+--------------+--> FAILED      (hold refused, or stock refused and the hold released)
       +------------+--------------+--> CANCELLING  (client cancel, or the saga deadline passed)
                                          |--> CANCELLED   (client cancel, once the ledger has undone its part)
                                          |--> FAILED      (deadline passed, once the ledger has undone its part)
                                          |--> REJECTED    (a review declined, once the ledger released the hold)
    (the rules block the request)     --> REJECTED
    (the rules ask for a review)      --> UNDER_REVIEW (the funds are held, no stock is reserved)
                                          |--> PENDING     (ops approve: the saga goes on, with a new deadline)
                                          |--> CANCELLING  (declined or not reviewed in time; a client cancel)
                                          |--> FAILED      (the hold was refused)

Events from the ledger and inventory arrive on different streams, so in any order: the in-flight
statuses only ever move forward, and an event that no longer applies changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from google.protobuf.message import Message

from paysaga.core import eventing
from paysaga.core.errors import FailedPrecondition
from paysaga.events.v1 import events_pb2


class Status(StrEnum):
    UNDER_REVIEW = "UNDER_REVIEW"
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
    # Where the purchase is made (ISO 3166-1 alpha-2), or "".
    region: str = ""

    def fingerprint(self) -> str:
        """Identifies the request's content, to tell a retry from a reuse of the key."""
        fields: tuple[object, ...] = (
            self.payer_account_id,
            self.merchant_account_id,
            self.sku,
            self.quantity,
            self.amount_minor,
            self.currency,
            self.sla_tier,
        )
        # Only when given: a request without a region keeps the fingerprint it had before regions.
        fields += (self.region,) if self.region else ()
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
    # A review declined it: once the ledger has released the hold it ends REJECTED.
    declined: bool = False
    # The rules' decision, when this payment was just created (stored beside it, and read from
    # there otherwise).
    decision: Decision | None = field(default=None, compare=False)

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
        if self.status is Status.UNDER_REVIEW:  # the hold was refused: that, not the review, is why
            self._move(Status.FAILED, now, reason)
            return events_pb2.PaymentFailed(payment_id=self.payment_id, reason=self.reason)
        if self.status not in IN_FLIGHT:
            return None
        self._move(Status.FAILED, now, self.reason or reason)
        return events_pb2.PaymentFailed(payment_id=self.payment_id, reason=self.reason)

    # Cancellation (by the client or the deadline) and refunds.

    def request_cancellation(self, reason: str, now: dt.datetime, *, timed_out: bool = False) -> Message | None:
        if self.status is Status.CANCELLING:
            return None
        if self.status not in IN_FLIGHT and self.status is not Status.UNDER_REVIEW:
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
        if self.declined:
            self._move(Status.REJECTED, now)
            return events_pb2.PaymentDeclined(payment_id=self.payment_id, reason=self.reason)
        if self.timed_out:
            self._move(Status.FAILED, now)
            return events_pb2.PaymentFailed(payment_id=self.payment_id, reason=self.reason)
        self._move(Status.CANCELLED, now)
        return events_pb2.PaymentCancelled(payment_id=self.payment_id, reason=self.reason)

    # A review (the rules asked a person to decide).

    def _check_under_review(self) -> None:
        if self.status is not Status.UNDER_REVIEW:
            raise FailedPrecondition(f"payment {self.payment_id} is {self.status}, not UNDER_REVIEW: nothing to decide")

    def approve(self, now: dt.datetime, deadline_at: dt.datetime) -> Message:
        """The purchase goes on: the saga's deadline runs from now."""
        self._check_under_review()
        self.deadline_at = deadline_at
        self._move(Status.PENDING, now, "")
        approved = events_pb2.PaymentApproved(
            payment_id=self.payment_id, sku=self.request.sku, quantity=self.request.quantity
        )
        approved.deadline.FromDatetime(deadline_at)
        return approved

    def decline(self, reason: str, now: dt.datetime) -> Message:
        """The purchase is refused: the ledger releases the hold, then the payment is REJECTED."""
        self._check_under_review()
        self.declined = True
        self._move(Status.CANCELLING, now, reason)
        return events_pb2.PaymentCancellationRequested(payment_id=self.payment_id, reason=reason)

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
    """The saga deadline, the fraud rules' settings and the limits of the built-in rules
    (services/payments/config.py reads them)."""

    saga_timeout_s: float = 30.0
    # A purchase the rules hold for review and nobody decides within this is declined.
    review_timeout_s: float = 3600.0
    # The built-in rules' cap and velocity limit (a rules file reads them as limits.*).
    max_amount_minor: int = 1_000_000
    velocity_limit: int = 20
    velocity_window_s: float = 60.0
    # The rules file ("": the built-in rules), and the rolling statistics' time buckets.
    rules_file: str = ""
    stats_bucket_s: float = 60.0
    baseline_buckets: int = 60
    # The exponentially weighted amounts: an amount weighs half as much every half-life.
    stats_half_life_s: float = 3600.0
    # A spike: at least spike_min_count attempts in a bucket, spike_z standard deviations above a
    # baseline of at least spike_min_buckets buckets.
    spike_z: float = 4.0
    spike_min_count: int = 20
    spike_min_buckets: int = 10
    # How many buckets after the one it was detected in a spike stays active for the rules.
    spike_hold_buckets: int = 5
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


class Action(StrEnum):
    """What the rules decide about a purchase, from the most lenient."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.REVIEW: 1, Action.BLOCK: 2}
# A score's reason names this many of the rules that made it (the decision lists them all).
SCORED_NAMED_MAX = 5


@dataclass(frozen=True)
class RuleHit:
    """A rule whose condition held: its own action, or its score, and the inputs it read."""

    rule_id: str
    shadow: bool
    action: Action | None
    score: int
    reason: str
    inputs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ScoreThresholds:
    """The score rules add up; a total at or above a threshold reviews or blocks."""

    review: int = 50
    block: int = 100

    def action(self, score: int) -> Action:
        if score >= self.block:
            return Action.BLOCK
        return Action.REVIEW if score >= self.review else Action.ALLOW


@dataclass(frozen=True)
class Decision:
    """The rules' verdict on one purchase and everything that went into it."""

    rule_set_sha256: str
    action: Action
    score: int
    hits: tuple[RuleHit, ...]
    # What the action would have been had the shadow rules been enforced too.
    shadow_action: Action
    # The rule that decided a review or a block ("score" when the total did), and why.
    rule: str = ""
    reason: str = ""
    # Every input the rules were given, by group ("request", "payer", ...): what a backtest replays.
    inputs: Mapping[str, Mapping[str, object]] = field(default_factory=dict, compare=False)


def decide(
    rule_set_sha256: str,
    hits: tuple[RuleHit, ...],
    thresholds: ScoreThresholds,
    inputs: Mapping[str, Mapping[str, object]] | None = None,
) -> Decision:
    """The decision the hits make: an allow rule that holds lets the purchase through whatever
    else holds (a trusted customer); otherwise the strictest of the enforced rules' actions and of
    what their total score reaches. Shadow hits only count towards shadow_action."""
    enforced = tuple(hit for hit in hits if not hit.shadow)
    action, rule, reason, score = _verdict(enforced, thresholds)
    shadow_action = _verdict(hits, thresholds)[0]
    return Decision(rule_set_sha256, action, score, hits, shadow_action, rule, reason, inputs or {})


def _verdict(hits: tuple[RuleHit, ...], thresholds: ScoreThresholds) -> tuple[Action, str, str, int]:
    score = sum(hit.score for hit in hits)
    action, rule, reason = thresholds.action(score), "", ""
    if action is not Action.ALLOW:
        scored_ids = [hit.rule_id for hit in hits if hit.score]
        scored = ", ".join(scored_ids[:SCORED_NAMED_MAX]) + (", ..." if len(scored_ids) > SCORED_NAMED_MAX else "")
        threshold = thresholds.block if action is Action.BLOCK else thresholds.review
        rule, reason = "score", f"risk score {score} reached the {action.value} threshold of {threshold} ({scored})"
    for hit in hits:  # the first rule of the strictest action names the reason
        if hit.action is not None and hit.action.severity > action.severity:
            action, rule, reason = hit.action, hit.rule_id, hit.reason
    allowed = next((hit for hit in hits if hit.action is Action.ALLOW), None)
    if allowed is not None:
        return Action.ALLOW, allowed.rule_id, allowed.reason, score
    return action, rule, reason, score
