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

from google.protobuf.message import Message

from paysaga.core.errors import AlreadyExists, FailedPrecondition, NotFound
from paysaga.core.eventing import EventEnvelope, new_event
from paysaga.events.v1 import events_pb2
from paysaga.runtime.storage.unit_of_work import UnitOfWork
from services.inventory import domain
from services.inventory.adapters import repository
from services.inventory.domain import Item, Reservation, ReservationStatus

PRODUCER = "inventory"


async def _emit(unit: UnitOfWork, cause: EventEnvelope, payload: Message) -> None:
    await unit.emit(new_event(producer=PRODUCER, saga_id=cause.saga_id, causation_id=cause.event_id, payload=payload))


async def on_funds_held(unit: UnitOfWork, event: EventEnvelope) -> None:
    held = event.funds_held
    if await repository.load_reservation(unit.connection, held.payment_id) is not None:
        return  # already reserved, or cancelled before the funds were held
    item = await repository.load_item(unit.connection, held.sku)
    refusal = domain.reservation_refusal(item, held.sku, held.quantity, held.amount.amount_minor, held.amount.currency)
    if refusal is not None:
        await _emit(unit, event, events_pb2.StockReservationFailed(payment_id=held.payment_id, reason=refusal))
        return
    assert item is not None
    reservation = Reservation(str(uuid.uuid4()), held.payment_id, held.sku, held.quantity, ReservationStatus.RESERVED)
    domain.reserve(item, reservation)
    await repository.insert_reservation(unit.connection, reservation)
    await repository.save_item(unit.connection, item)
    await _emit(
        unit,
        event,
        events_pb2.StockReserved(
            payment_id=held.payment_id, reservation_id=reservation.reservation_id, sku=held.sku, quantity=held.quantity
        ),
    )


async def on_funds_captured(unit: UnitOfWork, event: EventEnvelope) -> None:
    payment_id = event.funds_captured.payment_id
    reservation = await repository.load_reservation(unit.connection, payment_id)
    if reservation is None or reservation.status is not ReservationStatus.RESERVED:
        return  # released or restocked by a compensation that overtook the capture, or already committed
    item = await _item_of(unit, reservation)
    domain.commit(item, reservation)
    await _save(unit, item, reservation)
    await _emit(
        unit, event, events_pb2.StockCommitted(payment_id=payment_id, reservation_id=reservation.reservation_id)
    )


async def on_funds_released(unit: UnitOfWork, event: EventEnvelope) -> None:
    released = event.funds_released
    reservation = await _reservation_or_tombstone(unit, released.payment_id)
    if reservation is None or reservation.status is not ReservationStatus.RESERVED:
        return  # nothing was reserved (refused, or not reached yet), or already undone
    item = await _item_of(unit, reservation)
    domain.release(item, reservation)
    await _save(unit, item, reservation)
    await _emit(
        unit,
        event,
        events_pb2.StockReleased(
            payment_id=reservation.payment_id, reservation_id=reservation.reservation_id, reason=released.reason
        ),
    )


async def on_funds_refunded(unit: UnitOfWork, event: EventEnvelope) -> None:
    reservation = await _reservation_or_tombstone(unit, event.funds_refunded.payment_id)
    if reservation is not None and reservation.status in (ReservationStatus.RESERVED, ReservationStatus.COMMITTED):
        await _restock(unit, event, reservation)


async def _reservation_or_tombstone(unit: UnitOfWork, payment_id: str) -> Reservation | None:
    """The payment's reservation; if it has none, a tombstone, so a late FundsHeld reserves nothing."""
    reservation = await repository.load_reservation(unit.connection, payment_id)
    if reservation is None:
        tombstone = Reservation(str(uuid.uuid4()), payment_id, "", 0, ReservationStatus.CANCELLED)
        await repository.insert_reservation(unit.connection, tombstone)
    return reservation


async def _restock(unit: UnitOfWork, event: EventEnvelope, reservation: Reservation) -> None:
    item = await _item_of(unit, reservation)
    domain.restock(item, reservation)
    await _save(unit, item, reservation)
    await _emit(
        unit,
        event,
        events_pb2.StockRestocked(payment_id=reservation.payment_id, sku=item.sku, quantity=reservation.quantity),
    )


async def _item_of(unit: UnitOfWork, reservation: Reservation) -> Item:
    item = await repository.load_item(unit.connection, reservation.sku)
    assert item is not None, f"reservation {reservation.reservation_id} names unknown SKU {reservation.sku}"
    return item


async def _save(unit: UnitOfWork, item: Item, reservation: Reservation) -> None:
    await repository.save_item(unit.connection, item)
    await repository.save_reservation(unit.connection, reservation)


EVENT_HANDLERS = {
    "FundsHeld": on_funds_held,
    "FundsCaptured": on_funds_captured,
    "FundsReleased": on_funds_released,
    "FundsRefunded": on_funds_refunded,
}


# Commands from the gRPC API.


async def add_item(unit: UnitOfWork, item: Item) -> Item:
    """Add a SKU; a retry with the same details returns it unchanged."""
    existing = await repository.load_item(unit.connection, item.sku)
    if existing is not None:
        if (existing.name, existing.unit_price_minor, existing.currency) != (
            item.name,
            item.unit_price_minor,
            item.currency,
        ):
            raise AlreadyExists(f"SKU {item.sku} already exists, with other details")
        return existing
    await repository.insert_item(unit.connection, item)
    return item


async def receive_stock(unit: UnitOfWork, sku: str, quantity: int, receipt_id: str) -> Item:
    """Add stock; a retry with the same receipt_id and body has no second effect."""
    item = await repository.load_item(unit.connection, sku)
    if item is None:
        raise NotFound(f"SKU {sku} does not exist")
    earlier = await repository.find_receipt(unit.connection, receipt_id)
    if earlier is not None:
        if (earlier.sku, earlier.quantity) != (sku, quantity):
            raise FailedPrecondition(f"receipt_id {receipt_id} was already used for a different receipt")
        return item
    domain.receive(item, quantity)
    await repository.insert_receipt(unit.connection, receipt_id, sku, quantity)
    await repository.save_item(unit.connection, item)
    return item
