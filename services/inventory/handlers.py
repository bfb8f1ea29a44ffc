"""Inventory's handlers: one function per command or event.

Inventory reacts only to the ledger, so stock goes back only once the money has:

FundsHeld       -> reserve the stock                        -> StockReserved | StockReservationFailed
FundsCaptured   -> the reservation becomes a sale           -> StockCommitted
FundsReleased   -> the hold was voided: release any reservation -> StockReleased
FundsRefunded   -> the money is back: restock the sale      -> StockRestocked

A cancellation or a refund the ledger refuses (FundsRefundFailed) leaves the sale as it is.
"""

from __future__ import annotations

import uuid

from paysaga.core.access import Caller
from paysaga.core.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from paysaga.core.eventing import EventEnvelope
from paysaga.events.v1 import events_pb2
from services.inventory import domain
from services.inventory.adapters.repository import InventoryUnit
from services.inventory.domain import Item, Reservation, ReservationStatus

SERVICE = "inventory"


async def on_funds_held(unit: InventoryUnit, event: EventEnvelope) -> None:
    held = event.funds_held
    if await unit.inventory.load_reservation(held.payment_id) is not None:
        return  # already reserved, or cancelled before the funds were held
    item = await unit.inventory.load_item(held.sku)
    refusal = domain.reservation_refusal(item, held.sku, held.quantity, held.amount.amount_minor, held.amount.currency)
    if refusal is not None:
        unit.emit(events_pb2.StockReservationFailed(payment_id=held.payment_id, reason=refusal), cause=event)
        return
    assert item is not None
    reservation = Reservation(str(uuid.uuid4()), held.payment_id, held.sku, held.quantity, ReservationStatus.RESERVED)
    domain.reserve(item, reservation)
    await unit.inventory.insert_reservation(reservation)
    await unit.inventory.save_item(item)
    unit.emit(
        events_pb2.StockReserved(
            payment_id=held.payment_id, reservation_id=reservation.reservation_id, sku=held.sku, quantity=held.quantity
        ),
        cause=event,
    )


async def on_funds_captured(unit: InventoryUnit, event: EventEnvelope) -> None:
    payment_id = event.funds_captured.payment_id
    reservation = await unit.inventory.load_reservation(payment_id)
    if reservation is None or reservation.status is not ReservationStatus.RESERVED:
        return  # released or restocked by a compensation that overtook the capture, or already committed
    item = await _item_of(unit, reservation)
    domain.commit(item, reservation)
    await _save(unit, item, reservation)
    unit.emit(events_pb2.StockCommitted(payment_id=payment_id, reservation_id=reservation.reservation_id), cause=event)


async def on_funds_released(unit: InventoryUnit, event: EventEnvelope) -> None:
    released = event.funds_released
    reservation = await _reservation_or_tombstone(unit, released.payment_id)
    if reservation is None or reservation.status is not ReservationStatus.RESERVED:
        return  # nothing was reserved (refused, or not reached yet), or already undone
    item = await _item_of(unit, reservation)
    domain.release(item, reservation)
    await _save(unit, item, reservation)
    unit.emit(
        events_pb2.StockReleased(
            payment_id=reservation.payment_id, reservation_id=reservation.reservation_id, reason=released.reason
        ),
        cause=event,
    )


async def on_funds_refunded(unit: InventoryUnit, event: EventEnvelope) -> None:
    reservation = await _reservation_or_tombstone(unit, event.funds_refunded.payment_id)
    if reservation is not None and reservation.status in (ReservationStatus.RESERVED, ReservationStatus.COMMITTED):
        await _restock(unit, event, reservation)


async def _reservation_or_tombstone(unit: InventoryUnit, payment_id: str) -> Reservation | None:
    """The payment's reservation; if it has none, a tombstone, so a late FundsHeld reserves nothing."""
    reservation = await unit.inventory.load_reservation(payment_id)
    if reservation is None:
        tombstone = Reservation(str(uuid.uuid4()), payment_id, "", 0, ReservationStatus.CANCELLED)
        await unit.inventory.insert_reservation(tombstone)
    return reservation


async def _restock(unit: InventoryUnit, event: EventEnvelope, reservation: Reservation) -> None:
    item = await _item_of(unit, reservation)
    domain.restock(item, reservation)
    await _save(unit, item, reservation)
    unit.emit(
        events_pb2.StockRestocked(payment_id=reservation.payment_id, sku=item.sku, quantity=reservation.quantity),
        cause=event,
    )


async def _item_of(unit: InventoryUnit, reservation: Reservation) -> Item:
    item = await unit.inventory.load_item(reservation.sku)
    assert item is not None, f"reservation {reservation.reservation_id} names unknown SKU {reservation.sku}"
    return item


async def _save(unit: InventoryUnit, item: Item, reservation: Reservation) -> None:
    await unit.inventory.save_item(item)
    await unit.inventory.save_reservation(reservation)


EVENT_HANDLERS = {
    "FundsHeld": on_funds_held,
    "FundsCaptured": on_funds_captured,
    "FundsReleased": on_funds_released,
    "FundsRefunded": on_funds_refunded,
}


# Commands from the gRPC API.


async def add_item(unit: InventoryUnit, item: Item) -> Item:
    """Add a SKU; a retry with the same details returns it unchanged."""
    existing = await unit.inventory.load_item(item.sku)
    if existing is not None:
        details = (existing.name, existing.unit_price_minor, existing.currency, existing.owner_client)
        if details != (item.name, item.unit_price_minor, item.currency, item.owner_client):
            raise AlreadyExists(f"SKU {item.sku} already exists, with other details")
        return existing
    await unit.inventory.insert_item(item)
    # Payments keeps a copy of who sells which item, to check who may be paid for it.
    unit.emit(events_pb2.ItemAdded(sku=item.sku, owner=item.owner_client), saga_id=item_saga_id(item.sku))
    return item


def item_saga_id(sku: str) -> str:
    """The saga id of an item's own events: a UUID derived from its SKU."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"paysaga:item:{sku}"))


async def receive_stock(unit: InventoryUnit, sku: str, quantity: int, receipt_id: str, caller: Caller) -> Item:
    """Add stock to an item the caller sells (or any, for ops); a retry with the same receipt_id
    and body has no second effect."""
    item = await unit.inventory.load_item(sku)
    if item is None:
        raise NotFound(f"SKU {sku} does not exist")
    if not caller.may_use(SERVICE, item.owner_client):
        raise PermissionDenied(f"SKU {sku} is sold by another client")
    earlier = await unit.inventory.find_receipt(receipt_id)
    if earlier is not None:
        if (earlier.sku, earlier.quantity) != (sku, quantity):
            raise FailedPrecondition(f"receipt_id {receipt_id} was already used for a different receipt")
        return item
    domain.receive(item, quantity)
    await unit.inventory.insert_receipt(receipt_id, sku, quantity)
    await unit.inventory.save_item(item)
    return item
