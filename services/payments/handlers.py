"""The payments handlers: one function per command or event.

CreatePayment                 -> screened by the rules (decision recorded) -> PaymentRequested | PaymentRejected
FundsHeld, StockReserved      -> progress (FUNDS_HELD, STOCK_RESERVED)
FundsCaptured                 -> COMPLETED                        -> PaymentCompleted
FundsHoldFailed               -> FAILED                           -> PaymentFailed
StockReservationFailed        -> remember why; wait for the ledger to release the hold
FundsReleased                 -> FAILED, or CANCELLED after a cancel -> PaymentFailed | PaymentCancelled
FundsRefunded                 -> REFUNDED, or CANCELLED after a cancel -> PaymentRefunded | PaymentCancelled
FundsRefundFailed             -> COMPLETED again (refund refused), or COMPLETED after a cancel -> PaymentCompleted
CancelPayment / the deadline  -> CANCELLING                       -> PaymentCancellationRequested
ApprovePayment (a review)     -> PENDING                          -> PaymentApproved (the ledger answers FundsHeld)
DeclinePayment / its deadline -> CANCELLING, then REJECTED        -> PaymentCancellationRequested, PaymentDeclined
RefundPayment                 -> REFUNDING                        -> PaymentRefundRequested
AccountOpened, ItemAdded      -> payments' copy of who owns which account and sells which item

Who may do what (paysaga.core.access): a client pays from its own wallets into the merchant
account of the client selling the item, cancels as the payer, refunds as the merchant; ops
(payments:admin) may do everything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable

from google.protobuf.message import Message

from paysaga.common.v1.money_pb2 import Money
from paysaga.core.access import Caller
from paysaga.core.errors import FailedPrecondition, NotFound, PermissionDenied
from paysaga.core.eventing import EventEnvelope
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging.consumer import EventHandler
from services.payments.adapters.repository import AccountOwner, PaymentsUnit
from services.payments.domain import Action, Decision, Payment, PaymentLimits, PurchaseRequest, Status

log = logging.getLogger(__name__)
SERVICE = "payments"
# The rules' decision on a request, given the payer's purchases in the velocity window (counted
# exactly, under the payer's lock) and the time: services.payments.rules.screening.Screening.decide.
Screen = Callable[[PurchaseRequest, int, dt.datetime], Decision]


async def create_payment(
    unit: PaymentsUnit, request: PurchaseRequest, limits: PaymentLimits, caller: Caller, screen: Screen
) -> tuple[Payment, bool]:
    """Store and start a purchase the caller may make, as the rules decide (the decision is
    recorded with it); a retry with the same key and body returns the first one."""
    request = dataclasses.replace(request, requested_by=caller.identity)
    existing = await unit.payments.find_by_idempotency_key(caller.identity, request.idempotency_key)
    if existing is not None:
        payment, fingerprint = existing
        if fingerprint != request.fingerprint():
            raise FailedPrecondition(
                f"idempotency_key {request.idempotency_key!r} was already used by this client for a different "
                "payment; use a new key for a new payment"
            )
        return payment, True
    if not caller.is_admin(SERVICE):
        await _check_parties(unit, request, caller)
    # Only once the caller may pay from it: nobody else can hold up a payer's purchases. A racing
    # retry of the same key meets the unique key at insert, and is retried into a replay.
    await unit.payments.lock_payer(request.payer_account_id)
    now = unit.now()
    recent = await unit.payments.count_recent(
        request.payer_account_id, now - dt.timedelta(seconds=limits.velocity_window_s)
    )
    decision = screen(request, recent, now)
    blocked, review = decision.action is Action.BLOCK, decision.action is Action.REVIEW
    payment = Payment(
        str(uuid.uuid4()),
        request,
        Status.REJECTED if blocked else Status.UNDER_REVIEW if review else Status.PENDING,
        decision.reason if blocked or review else "",
        1,
        now,
        now,
        now + dt.timedelta(seconds=limits.review_timeout_s if review else limits.saga_timeout_s),
        decision=decision,
    )
    await unit.payments.insert(payment)
    await unit.payments.record_decision(payment.payment_id, decision, now)
    amount = Money(amount_minor=request.amount_minor, currency=request.currency)
    if blocked:
        log.info(
            "payment.rejected",
            extra={"payment_id": payment.payment_id, "rule": decision.rule, "reason": decision.reason},
        )
        rejected = events_pb2.PaymentRejected(
            payment_id=payment.payment_id,
            rule=decision.rule,
            reason=decision.reason,
            payer_account_id=request.payer_account_id,
            merchant_account_id=request.merchant_account_id,
            amount=amount,
            region=request.region,
        )
        unit.emit(rejected, saga_id=payment.payment_id, tier=payment.tier)
        return payment, False
    requested = events_pb2.PaymentRequested(
        payment_id=payment.payment_id,
        payer_account_id=request.payer_account_id,
        merchant_account_id=request.merchant_account_id,
        sku=request.sku,
        quantity=request.quantity,
        amount=amount,
        sla_tier=request.sla_tier,
        region=request.region,
        under_review=review,
    )
    requested.deadline.FromDatetime(payment.deadline_at)
    unit.emit(requested, saga_id=payment.payment_id, tier=payment.tier)
    if review:
        held = {"payment_id": payment.payment_id, "rule": decision.rule, "reason": decision.reason}
        log.warning("payment.under_review", extra=held)
    return payment, False


async def _check_parties(unit: PaymentsUnit, request: PurchaseRequest, caller: Caller) -> None:
    """The caller pays from a wallet of its own, into the merchant account of the client selling
    the item. The refusal is the same whether an account exists or not; a record created moments
    ago may not be known here yet (payments learns of it from the ledger's and inventory's events)."""
    payer = await unit.payments.account_owner(request.payer_account_id)
    if payer is None or payer.kind != "WALLET" or not caller.owns(payer.client):
        raise PermissionDenied(
            f"payer_account_id {request.payer_account_id} is not a wallet of yours (one opened moments ago "
            "may not be known here yet: try again)"
        )
    merchant = await unit.payments.account_owner(request.merchant_account_id)
    seller = await unit.payments.item_seller(request.sku)
    if merchant is None or merchant.kind != "MERCHANT" or not seller or merchant.client != seller:
        raise PermissionDenied(
            f"merchant_account_id {request.merchant_account_id} is not the account of the client selling "
            f"{request.sku} (one opened moments ago may not be known here yet: try again)"
        )


async def cancel_payment(unit: PaymentsUnit, payment_id: str, reason: str, caller: Caller) -> Payment:
    """The payer (or ops) asks to stop a payment before it completes."""
    payment = await _existing(unit, payment_id)
    await _check_party(unit, payment, payment.request.payer_account_id, caller)
    await _save_and_emit(
        unit, payment, payment.version, payment.request_cancellation(reason or "cancelled by the client", unit.now())
    )
    return payment


async def refund_payment(unit: PaymentsUnit, payment_id: str, reason: str, caller: Caller) -> Payment:
    """The merchant (or ops) gives the money of a completed payment back."""
    payment = await _existing(unit, payment_id)
    await _check_party(unit, payment, payment.request.merchant_account_id, caller)
    await _save_and_emit(
        unit, payment, payment.version, payment.request_refund(reason or "refund requested by the client", unit.now())
    )
    return payment


async def approve_payment(
    unit: PaymentsUnit, payment_id: str, reason: str, caller: Caller, limits: PaymentLimits
) -> Payment:
    """Ops let a purchase held for review go on (audited)."""
    payment = await _existing(unit, payment_id)
    now, before = unit.now(), payment.version
    approved = payment.approve(now, now + dt.timedelta(seconds=limits.saga_timeout_s))
    await _save_and_emit(unit, payment, before, approved)
    log.warning("payment.review_approved", extra={"payment_id": payment_id, "by": caller.identity, "reason": reason})
    return payment


async def decline_payment(unit: PaymentsUnit, payment_id: str, reason: str, caller: Caller) -> Payment:
    """Ops refuse a purchase held for review (audited): the hold is released, then it is REJECTED."""
    payment = await _existing(unit, payment_id)
    before = payment.version
    declined = payment.decline(f"declined in review: {reason or 'no reason given'}", unit.now())
    await _save_and_emit(unit, payment, before, declined)
    log.warning("payment.review_declined", extra={"payment_id": payment_id, "by": caller.identity, "reason": reason})
    return payment


async def time_out(unit: PaymentsUnit, payment_id: str, limits: PaymentLimits, *, force: bool = False) -> None:
    """The payment's deadline passed: undo it. Read again under its lock, the deadline may have
    moved since the sweeper saw it (a review approved meanwhile starts a new one): then nothing
    happens. force: as if it had passed (the simulator's clock does not run for 30 s)."""
    payment = await _existing(unit, payment_id)
    if payment.deadline_at > unit.now() and not force:
        return
    if payment.status is Status.UNDER_REVIEW:
        reason, before = f"not reviewed within {limits.review_timeout_s:g} s", payment.version
        await _save_and_emit(unit, payment, before, payment.decline(reason, unit.now()))
        log.warning("payment.review_timed_out", extra={"payment_id": payment_id, "reason": reason})
        return
    timeout_s = limits.saga_timeout_s
    if payment.status not in (Status.PENDING, Status.FUNDS_HELD, Status.STOCK_RESERVED):
        return
    step = {Status.PENDING: "the ledger to hold funds", Status.FUNDS_HELD: "inventory to reserve stock"}.get(
        payment.status, "the ledger to capture funds"
    )
    # A step that already failed (e.g. inventory refused, the ledger has yet to release) is the
    # reason, not the deadline that passed while waiting for the release.
    reason = payment.reason or f"saga timed out after {timeout_s:g} s waiting for {step}"
    before = payment.version
    await _save_and_emit(unit, payment, before, payment.request_cancellation(reason, unit.now(), timed_out=True))
    log.warning("payment.timed_out", extra={"payment_id": payment_id, "reason": reason})


async def _save_and_emit(
    unit: PaymentsUnit,
    payment: Payment,
    version_before: int,
    outcome: Message | bool | None,
    cause: EventEnvelope | None = None,
) -> None:
    """Save the payment if the change moved it (one history row per version), then emit its event."""
    if payment.version != version_before:
        await unit.payments.save(payment)
    if isinstance(outcome, Message):
        unit.emit(outcome, saga_id=payment.payment_id, cause=cause, tier=payment.tier)


async def _check_party(unit: PaymentsUnit, payment: Payment, account_id: str, caller: Caller) -> None:
    """The caller owns this side's account (or is ops); to anyone else the payment does not exist."""
    if caller.is_admin(SERVICE):
        return
    owner = await unit.payments.account_owner(account_id)
    if owner is None or not caller.owns(owner.client):
        raise NotFound(f"payment {payment.payment_id} does not exist")


async def _existing(unit: PaymentsUnit, payment_id: str) -> Payment:
    payment = await unit.payments.load(payment_id)
    if payment is None:
        raise NotFound(f"payment {payment_id} does not exist")
    return payment


def _reacting(
    change: Callable[[Payment, EventEnvelope, dt.datetime], Message | bool | None],
) -> EventHandler[PaymentsUnit]:
    """An event handler: load the saga's payment, apply change, save, emit what it returned."""

    async def handle(unit: PaymentsUnit, event: EventEnvelope) -> None:
        payment = await unit.payments.load(event.saga_id)
        if payment is None:
            raise NotFound(f"event {event.event_type} for unknown payment {event.saga_id}")
        before = payment.version
        await _save_and_emit(unit, payment, before, change(payment, event, unit.now()), event)

    return handle


async def on_account_opened(unit: PaymentsUnit, event: EventEnvelope) -> None:
    opened = event.account_opened
    await unit.payments.record_account_owner(opened.account_id, AccountOwner(opened.kind, opened.owner))


async def on_item_added(unit: PaymentsUnit, event: EventEnvelope) -> None:
    await unit.payments.record_item_seller(event.item_added.sku, event.item_added.owner)


EVENT_HANDLERS: dict[str, EventHandler[PaymentsUnit]] = {
    "AccountOpened": on_account_opened,
    "ItemAdded": on_item_added,
    "FundsHeld": _reacting(lambda payment, _event, now: payment.advance(Status.FUNDS_HELD, now)),
    "StockReserved": _reacting(lambda payment, _event, now: payment.advance(Status.STOCK_RESERVED, now)),
    "FundsCaptured": _reacting(lambda payment, _event, now: payment.complete(now)),
    "FundsHoldFailed": _reacting(lambda payment, event, now: payment.fail(event.funds_hold_failed.reason, now)),
    "StockReservationFailed": _reacting(
        lambda payment, event, now: payment.note_failure(event.stock_reservation_failed.reason, now)
    ),
    "FundsReleased": _reacting(lambda payment, event, now: payment.fail(event.funds_released.reason, now)),
    "FundsRefunded": _reacting(lambda payment, _event, now: payment.conclude_refund(now)),
    "FundsRefundFailed": _reacting(
        lambda payment, event, now: payment.refund_refused(event.funds_refund_failed.reason, now)
    ),
}
