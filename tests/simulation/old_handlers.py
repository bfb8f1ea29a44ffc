"""The saga as it was before money moved first (up to commit 62a87d4), to show the simulator finds
what was wrong with it: inventory restocked on the refund request itself (and undid its part on
the cancellation request), and the ledger refused a refund the merchant could not pay by raising,
so the event was retried, then parked, while the stock was already back on the shelf and the
payment stayed REFUNDING."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paysaga.core.errors import FailedPrecondition
from paysaga.core.eventing import EventEnvelope
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging.consumer import EventHandler, subscriptions_for
from paysaga.runtime.storage.unit_of_work import UnitOfWork
from services.inventory import domain as inventory_domain
from services.inventory import handlers as inventory
from services.inventory.adapters.repository import InventoryUnit
from services.inventory.domain import ReservationStatus
from services.ledger import domain as ledger_domain
from services.ledger import handlers as ledger
from services.ledger.adapters.repository import LedgerUnit
from services.ledger.domain import HoldStatus
from tests.simulation.world import CURRENT_CODE, ServiceCode


async def ledger_refund_or_raise(unit: LedgerUnit, event: EventEnvelope) -> None:
    """The old refund: a refund the merchant cannot pay raised, and nothing said so."""
    payment_id = event.payment_refund_requested.payment_id or event.payment_cancellation_requested.payment_id
    hold = await unit.ledger.load_hold(payment_id)
    if hold is not None and hold.status is HoldStatus.CAPTURED:
        merchant = (await unit.ledger.load_accounts([hold.merchant_account_id]))[hold.merchant_account_id]
        refusal = ledger_domain.refund_refusal(hold, merchant)
        if refusal is not None:
            raise FailedPrecondition(refusal)
    if event.HasField("payment_refund_requested"):
        await ledger.on_payment_refund_requested(unit, event)
    else:
        await ledger.on_payment_cancellation_requested(unit, event)


async def inventory_undo_on_request(unit: InventoryUnit, event: EventEnvelope) -> None:
    """The old inventory: it undid its part as soon as payments asked, before the money was back."""
    is_refund = event.HasField("payment_refund_requested")
    payment_id = (event.payment_refund_requested if is_refund else event.payment_cancellation_requested).payment_id
    reservation = await unit.inventory.load_reservation(payment_id)
    if reservation is None:
        if not is_refund:
            await inventory._reservation_or_tombstone(unit, payment_id)
        return
    if reservation.status is ReservationStatus.COMMITTED or (
        is_refund and reservation.status is ReservationStatus.RESERVED
    ):
        await inventory._restock(unit, event, reservation)
    elif reservation.status is ReservationStatus.RESERVED:
        item = await inventory._item_of(unit, reservation)
        inventory_domain.release(item, reservation)
        await inventory._save(unit, item, reservation)
        unit.emit(events_pb2.StockReleased(payment_id=payment_id, reason="cancelled"), cause=event)


async def ignore(unit: UnitOfWork, event: EventEnvelope) -> None:
    """The old inventory did not consume these ledger events."""


def _code() -> Mapping[str, ServiceCode]:
    ledger_code = CURRENT_CODE["ledger"]
    inventory_code = CURRENT_CODE["inventory"]
    ledger_handlers: dict[str, EventHandler[Any]] = {
        **ledger_code.handlers,
        "PaymentRefundRequested": ledger_refund_or_raise,
        "PaymentCancellationRequested": ledger_refund_or_raise,
    }
    inventory_handlers: dict[str, EventHandler[Any]] = {
        **inventory_code.handlers,
        "FundsReleased": ignore,
        "FundsRefunded": ignore,
        "PaymentCancellationRequested": inventory_undo_on_request,
        "PaymentRefundRequested": inventory_undo_on_request,
    }
    return {
        **CURRENT_CODE,
        "ledger": ServiceCode(ledger_code.metadata, ledger_code.unit, ledger_handlers, ledger_code.subscriptions),
        "inventory": ServiceCode(
            inventory_code.metadata,
            inventory_code.unit,
            inventory_handlers,
            subscriptions_for(
                dict.fromkeys(("FundsHeld", "FundsCaptured", "PaymentCancellationRequested", "PaymentRefundRequested"))
            ),
        ),
    }


OLD_CODE = _code()
