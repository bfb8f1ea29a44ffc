"""Loading and saving inventory's domain objects inside a unit of work."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.unit_of_work import utc_now
from services.inventory.adapters.tables import items, receipts, reservations
from services.inventory.domain import Item, Reservation, ReservationStatus

QUANTITIES = ("quantity_available", "quantity_reserved", "quantity_sold", "quantity_received", "quantity_restocked_out")


def item_from_row(row: Any) -> Item:
    return Item(row.sku, row.name, row.unit_price_minor, row.currency, *(getattr(row, name) for name in QUANTITIES))


async def load_item(connection: AsyncConnection, sku: str) -> Item | None:
    row = (await connection.execute(sa.select(items).where(items.c.sku == sku).with_for_update())).first()
    return None if row is None else item_from_row(row)


async def insert_item(connection: AsyncConnection, item: Item) -> None:
    now = utc_now()
    await connection.execute(
        items.insert().values(
            sku=item.sku,
            name=item.name,
            unit_price_minor=item.unit_price_minor,
            currency=item.currency,
            created_at=now,
            updated_at=now,
            **{name: getattr(item, name) for name in QUANTITIES},
        )
    )


async def save_item(connection: AsyncConnection, item: Item) -> None:
    await connection.execute(
        items.update()
        .where(items.c.sku == item.sku)
        .values(updated_at=utc_now(), **{name: getattr(item, name) for name in QUANTITIES})
    )


async def load_reservation(connection: AsyncConnection, payment_id: str) -> Reservation | None:
    row = (
        await connection.execute(
            sa.select(reservations).where(reservations.c.payment_id == payment_id).with_for_update()
        )
    ).first()
    if row is None:
        return None
    return Reservation(row.reservation_id, row.payment_id, row.sku, row.quantity, ReservationStatus(row.status))


async def insert_reservation(connection: AsyncConnection, reservation: Reservation) -> None:
    await connection.execute(
        reservations.insert().values(
            reservation_id=reservation.reservation_id,
            payment_id=reservation.payment_id,
            sku=reservation.sku,
            quantity=reservation.quantity,
            status=reservation.status.value,
            updated_at=utc_now(),
        )
    )


async def save_reservation(connection: AsyncConnection, reservation: Reservation) -> None:
    await connection.execute(
        reservations.update()
        .where(reservations.c.reservation_id == reservation.reservation_id)
        .values(status=reservation.status.value, updated_at=utc_now())
    )


async def find_receipt(connection: AsyncConnection, receipt_id: str) -> Any:
    return (await connection.execute(sa.select(receipts).where(receipts.c.receipt_id == receipt_id))).first()


async def insert_receipt(connection: AsyncConnection, receipt_id: str, sku: str, quantity: int) -> None:
    await connection.execute(
        receipts.insert().values(receipt_id=receipt_id, sku=sku, quantity=quantity, received_at=utc_now())
    )
