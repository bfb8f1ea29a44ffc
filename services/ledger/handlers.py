"""The ledger's handlers: one function per command or event.

Each runs inside a unit of work: load (with row locks, in id order), call the domain, save,
emit. The ledger reacts to the saga like this:

    PaymentRequested              -> hold the payer's funds       -> FundsHeld | FundsHoldFailed
      (under review)              -> hold them, and wait          -> FundsHeldForReview | FundsHoldFailed
    PaymentApproved               -> the held funds go on         -> FundsHeld
    StockReserved                 -> capture the hold              -> FundsCaptured
    StockReservationFailed        -> release the hold              -> FundsReleased
    PaymentCancellationRequested  -> release, or refund a capture  -> FundsReleased | FundsRefunded | FundsRefundFailed
    PaymentRefundRequested        -> refund the capture            -> FundsRefunded | FundsRefundFailed

Money moves first in every compensation: inventory puts stock back only once the ledger says the
money is back (FundsReleased, FundsRefunded). A refund the merchant can no longer pay for moves
nothing and says so (FundsRefundFailed).
"""

from __future__ import annotations

import hashlib
import uuid

from paysaga.common.v1.money_pb2 import Money
from paysaga.core.errors import AlreadyExists, FailedPrecondition, NotFound
from paysaga.core.eventing import EventEnvelope
from paysaga.events.v1 import events_pb2
from services.ledger import domain
from services.ledger.adapters.repository import LedgerUnit
from services.ledger.domain import Account, AccountKind, EntryKind, Hold, HoldStatus


async def _record(
    unit: LedgerUnit,
    account: Account,
    kind: EntryKind,
    amount_minor: int,
    entry_id: str,
    saga_id: str,
    description: str,
) -> None:
    await unit.ledger.add_statement_line(
        account,
        entry_id=entry_id,
        kind=kind,
        amount_minor=amount_minor,
        saga_id=saga_id,
        description=description,
    )


async def on_payment_requested(unit: LedgerUnit, event: EventEnvelope) -> None:
    request = event.payment_requested
    under_review = request.under_review
    existing = await unit.ledger.load_hold(request.payment_id)
    if existing is not None and existing.status is HoldStatus.APPROVED:
        await unit.ledger.delete_marker(existing)  # approved already: hold and go on
        existing, under_review = None, False
    if existing is not None:
        if existing.status is HoldStatus.CANCELLED:
            unit.emit(
                events_pb2.FundsHoldFailed(payment_id=request.payment_id, reason="payment was cancelled"), cause=event
            )
        return
    loaded = await unit.ledger.load_accounts([request.payer_account_id, request.merchant_account_id])
    payer, merchant = loaded.get(request.payer_account_id), loaded.get(request.merchant_account_id)
    refusal = domain.hold_refusal(payer, merchant, request.amount.amount_minor, request.amount.currency)
    if refusal is not None:
        if under_review:
            # A marker: an approval that crosses the refusal finds that no hold will ever come.
            await unit.ledger.insert_hold(_marker(request.payment_id, HoldStatus.CANCELLED))
        unit.emit(events_pb2.FundsHoldFailed(payment_id=request.payment_id, reason=refusal), cause=event)
        return
    assert payer is not None
    hold = Hold(
        str(uuid.uuid4()),
        request.payment_id,
        request.payer_account_id,
        request.merchant_account_id,
        request.amount.amount_minor,
        request.amount.currency,
        HoldStatus.HELD,
    )
    domain.place_hold(payer, hold)
    await unit.ledger.insert_hold(hold)
    await unit.ledger.save_accounts(payer)
    await _record(
        unit, payer, EntryKind.HOLD, hold.amount_minor, hold.hold_id, hold.payment_id, "funds held for purchase"
    )
    if under_review:
        held = events_pb2.FundsHeldForReview(payment_id=hold.payment_id, hold_id=hold.hold_id, amount=_money(hold))
        unit.emit(held, cause=event)
        return
    unit.emit(_funds_held(hold, request.sku, request.quantity), cause=event)


async def on_payment_approved(unit: LedgerUnit, event: EventEnvelope) -> None:
    """A purchase held for review goes on: the hold placed for it now answers FundsHeld (what
    inventory reserves stock on). Before the request it approves (another worker, another
    replica, a redelivery): a marker, so that the request holds and goes on at once. A hold
    released meanwhile (a cancel crossed the approval) or refused stays as it is: payments learns
    of that from its own events."""
    approved = event.payment_approved
    hold = await unit.ledger.load_hold(approved.payment_id)
    if hold is None:
        await unit.ledger.insert_hold(_marker(approved.payment_id, HoldStatus.APPROVED))
    elif hold.status is HoldStatus.HELD:
        unit.emit(_funds_held(hold, approved.sku, approved.quantity), cause=event)


def _funds_held(hold: Hold, sku: str, quantity: int) -> events_pb2.FundsHeld:
    return events_pb2.FundsHeld(
        payment_id=hold.payment_id, hold_id=hold.hold_id, amount=_money(hold), sku=sku, quantity=quantity
    )


def _marker(payment_id: str, status: HoldStatus) -> Hold:
    """What the ledger knows of a payment before its request: CANCELLED, it must not (or could
    not) hold; APPROVED, its review's approval came first."""
    return Hold(str(uuid.uuid4()), payment_id, "", "", 0, "", status)


async def on_stock_reserved(unit: LedgerUnit, event: EventEnvelope) -> None:
    hold = await unit.ledger.load_hold(event.stock_reserved.payment_id)
    if hold is None or hold.status is not HoldStatus.HELD:
        return  # cancelled or timed out meanwhile: the cancellation released the hold
    accounts = await unit.ledger.load_accounts([hold.payer_account_id, hold.merchant_account_id])
    payer, merchant = accounts[hold.payer_account_id], accounts[hold.merchant_account_id]
    entry = domain.capture(hold, payer, merchant)
    await unit.ledger.insert_entry(entry)
    await unit.ledger.save_hold(hold)
    await unit.ledger.save_accounts(payer, merchant)
    await _record(unit, payer, EntryKind.CAPTURE, -hold.amount_minor, entry.entry_id, hold.payment_id, "purchase paid")
    await _record(
        unit, merchant, EntryKind.CAPTURE, hold.amount_minor, entry.entry_id, hold.payment_id, "purchase received"
    )
    unit.emit(
        events_pb2.FundsCaptured(payment_id=hold.payment_id, hold_id=hold.hold_id, amount=_money(hold)), cause=event
    )


async def on_stock_reservation_failed(unit: LedgerUnit, event: EventEnvelope) -> None:
    failed = event.stock_reservation_failed
    # The same words whichever of the two events reaches payments first.
    await _release(unit, event, failed.payment_id, failed.reason)


async def on_payment_cancellation_requested(unit: LedgerUnit, event: EventEnvelope) -> None:
    cancellation = event.payment_cancellation_requested
    reason = cancellation.reason or ("saga timed out" if cancellation.timed_out else "cancelled")
    hold = await unit.ledger.load_hold(cancellation.payment_id)
    if hold is not None and hold.status in (HoldStatus.CAPTURED, HoldStatus.REFUNDED):
        await _refund(unit, event, hold)
        return
    await _release(unit, event, cancellation.payment_id, reason)


async def on_payment_refund_requested(unit: LedgerUnit, event: EventEnvelope) -> None:
    hold = await unit.ledger.load_hold(event.payment_refund_requested.payment_id)
    if hold is None or hold.status not in (HoldStatus.CAPTURED, HoldStatus.REFUNDED):
        raise FailedPrecondition(f"refund requested for payment {event.saga_id} whose funds were never captured")
    await _refund(unit, event, hold)


async def _release(unit: LedgerUnit, event: EventEnvelope, payment_id: str, reason: str) -> None:
    """Void the hold if there is one; always answer, so the payment can conclude."""
    hold = await unit.ledger.load_hold(payment_id)
    if hold is None or hold.status is HoldStatus.APPROVED:
        # Nothing held yet: leave a marker so a late PaymentRequested does not hold.
        if hold is None:
            await unit.ledger.insert_hold(_marker(payment_id, HoldStatus.CANCELLED))
        else:
            hold.status = HoldStatus.CANCELLED
            await unit.ledger.save_hold(hold)
        unit.emit(events_pb2.FundsReleased(payment_id=payment_id, hold_id="", reason=reason), cause=event)
        return
    if hold.status is HoldStatus.HELD:
        payer = (await unit.ledger.load_accounts([hold.payer_account_id]))[hold.payer_account_id]
        domain.release(hold, payer)
        await unit.ledger.save_hold(hold)
        await unit.ledger.save_accounts(payer)
        await _record(
            unit, payer, EntryKind.RELEASE, hold.amount_minor, hold.hold_id, payment_id, f"hold released: {reason}"
        )
    unit.emit(events_pb2.FundsReleased(payment_id=payment_id, hold_id=hold.hold_id, reason=reason), cause=event)


async def _refund(unit: LedgerUnit, event: EventEnvelope, hold: Hold) -> None:
    if hold.status is HoldStatus.CAPTURED:
        accounts = await unit.ledger.load_accounts([hold.payer_account_id, hold.merchant_account_id])
        payer, merchant = accounts[hold.payer_account_id], accounts[hold.merchant_account_id]
        refusal = domain.refund_refusal(hold, merchant)
        if refusal is not None:
            unit.emit(events_pb2.FundsRefundFailed(payment_id=hold.payment_id, reason=refusal), cause=event)
            return
        entry = domain.refund(hold, payer, merchant)
        await unit.ledger.insert_entry(entry)
        await unit.ledger.save_hold(hold)
        await unit.ledger.save_accounts(payer, merchant)
        await _record(
            unit, merchant, EntryKind.REFUND, -hold.amount_minor, entry.entry_id, hold.payment_id, "purchase refunded"
        )
        await _record(
            unit, payer, EntryKind.REFUND, hold.amount_minor, entry.entry_id, hold.payment_id, "purchase refunded"
        )
    unit.emit(events_pb2.FundsRefunded(payment_id=hold.payment_id, amount=_money(hold)), cause=event)


def _money(hold: Hold) -> Money:
    return Money(amount_minor=hold.amount_minor, currency=hold.currency)


EVENT_HANDLERS = {
    "PaymentRequested": on_payment_requested,
    "PaymentApproved": on_payment_approved,
    "StockReserved": on_stock_reserved,
    "StockReservationFailed": on_stock_reservation_failed,
    "PaymentCancellationRequested": on_payment_cancellation_requested,
    "PaymentRefundRequested": on_payment_refund_requested,
}


# Commands from the gRPC API.


async def open_account(unit: LedgerUnit, account: Account) -> Account:
    """Open an account; a retry with the same id and details returns it unchanged."""
    existing = (await unit.ledger.load_accounts([account.account_id])).get(account.account_id)
    if existing is not None:
        details = (existing.kind, existing.currency, existing.owner, existing.owner_client)
        if details != (account.kind, account.currency, account.owner, account.owner_client):
            raise AlreadyExists(f"account {account.account_id} already exists, with other details")
        return existing
    await unit.ledger.insert_account(account)
    # Payments keeps a copy of who owns which account, to decide who may pay from or into it.
    unit.emit(
        events_pb2.AccountOpened(
            account_id=account.account_id,
            kind=account.kind.value,
            currency=account.currency,
            owner=account.owner_client,
        ),
        saga_id=account.account_id,
    )
    return account


async def deposit(
    unit: LedgerUnit, account_id: str, amount_minor: int, currency: str, deposit_id: str
) -> tuple[Account, bool]:
    """Fund an account; a retry with the same deposit_id and body returns the account unchanged."""
    request_hash = hashlib.sha256(f"{account_id}|{amount_minor}|{currency}".encode()).hexdigest()
    exists, earlier_hash = await unit.ledger.find_entry_hash(deposit_id)
    external_id = domain.external_account_id(currency)
    accounts = await unit.ledger.load_accounts([account_id, external_id])
    account = accounts.get(account_id)
    if account is None:
        raise NotFound(f"account {account_id} does not exist")
    if exists:
        if earlier_hash != request_hash:
            raise FailedPrecondition(f"deposit_id {deposit_id} was already used for a different deposit")
        return account, True
    if account.currency != currency:
        raise FailedPrecondition(f"account {account_id} holds {account.currency}, not {currency}")
    external = accounts.get(external_id)
    if external is None:
        external = Account(external_id, AccountKind.EXTERNAL, currency, f"external funding {currency}")
        await unit.ledger.insert_account(external)
    entry = domain.deposit(account, external, amount_minor, deposit_id)
    await unit.ledger.insert_entry(entry, request_hash)
    await unit.ledger.save_accounts(account, external)
    await _record(unit, account, EntryKind.DEPOSIT, amount_minor, deposit_id, "", "deposit")
    return account, False
