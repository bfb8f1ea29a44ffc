"""Inventory's handlers: one function per command or event.

FundsHeld                     -> reserve the stock                -> StockReserved | StockReservationFailed
FundsCaptured                 -> the reservation becomes a sale   -> StockCommitted
PaymentCancellationRequested  -> release (or restock a sale)      -> StockReleased | StockRestocked
PaymentRefundRequested        -> restock the sale                 -> StockRestocked
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
        return  # restocked by a refund that overtook the capture, or already committed
    item = await _item_of(unit, reservation)
    domain.commit(item, reservation)
    await _save(unit, item, reservation)
    await _emit(
        unit, event, events_pb2.StockCommitted(payment_id=payment_id, reservation_id=reservation.reservation_id)
    )


async def on_payment_cancellation_requested(unit: UnitOfWork, event: EventEnvelope) -> None:
    cancellation = event.payment_cancellation_requested
    reason = cancellation.reason or "cancelled"
    reservation = await repository.load_reservation(unit.connection, cancellation.payment_id)
    if reservation is None:
        tombstone = Reservation(str(uuid.uuid4()), cancellation.payment_id, "", 0, ReservationStatus.CANCELLED)
        await repository.insert_reservation(unit.connection, tombstone)
        await _emit(unit, event, events_pb2.StockReleased(payment_id=cancellation.payment_id, reason=reason))
        return
    if reservation.status is ReservationStatus.RESERVED:
        item = await _item_of(unit, reservation)
        domain.release(item, reservation)
        await _save(unit, item, reservation)
        await _emit(
            unit,
            event,
            events_pb2.StockReleased(
                payment_id=reservation.payment_id, reservation_id=reservation.reservation_id, reason=reason
            ),
        )
    elif reservation.status is ReservationStatus.COMMITTED:
        await _restock(unit, event, reservation)


async def on_payment_refund_requested(unit: UnitOfWork, event: EventEnvelope) -> None:
    payment_id = event.payment_refund_requested.payment_id
    reservation = await repository.load_reservation(unit.connection, payment_id)
    if reservation is None:
        raise FailedPrecondition(f"refund requested for payment {payment_id} that reserved no stock")
    if reservation.status in (ReservationStatus.RESERVED, ReservationStatus.COMMITTED):
        await _restock(unit, event, reservation)


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
    "PaymentCancellationRequested": on_payment_cancellation_requested,
    "PaymentRefundRequested": on_payment_refund_requested,
}


# Commands from the gRPC API.


async def add_item(unit: UnitOfWork, item: Item) -> Item:
    if await repository.load_item(unit.connection, item.sku) is not None:
        raise AlreadyExists(f"SKU {item.sku} already exists")
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
