"""Loading and saving inventory's domain objects inside a unit of work."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa

from paysaga.runtime.storage.prepared import Prepared
from paysaga.runtime.storage.unit_of_work import Repository, UnitOfWork
from services.inventory.adapters.tables import items, receipts, reservations
from services.inventory.domain import Item, Reservation, ReservationStatus

QUANTITIES = ("quantity_available", "quantity_reserved", "quantity_sold", "quantity_received", "quantity_restocked_out")

# The hot statements are built and compiled once (paysaga.runtime.storage.prepared); an UPDATE's SET
# takes the columns named by the parameters, and its key is bound under another name.
_LOAD_ITEM = Prepared(sa.select(items).where(items.c.sku == sa.bindparam("sku")).with_for_update())
_UPDATE_ITEM = Prepared(items.update().where(items.c.sku == sa.bindparam("b_sku")))
_LOAD_RESERVATION = Prepared(
    sa.select(reservations).where(reservations.c.payment_id == sa.bindparam("payment_id")).with_for_update()
)
_INSERT_RESERVATION = Prepared(reservations.insert())
_UPDATE_RESERVATION = Prepared(
    reservations.update().where(reservations.c.reservation_id == sa.bindparam("b_reservation_id"))
)


def item_from_row(row: Any) -> Item:
    quantities = {name: getattr(row, name) for name in QUANTITIES}
    return Item(row.sku, row.name, row.unit_price_minor, row.currency, owner_client=row.owner_client, **quantities)


class InventoryRepository(Repository):
    """Items, reservations and receipts; rows loaded for update are locked until commit."""

    async def load_item(self, sku: str) -> Item | None:
        row = (await self._unit.run(_LOAD_ITEM, {"sku": sku})).first()
        return None if row is None else item_from_row(row)

    async def insert_item(self, item: Item) -> None:
        now = self._unit.now()
        await self._connection.execute(
            items.insert().values(
                sku=item.sku,
                name=item.name,
                unit_price_minor=item.unit_price_minor,
                currency=item.currency,
                owner_client=item.owner_client,
                created_at=now,
                updated_at=now,
                **{name: getattr(item, name) for name in QUANTITIES},
            )
        )

    async def save_item(self, item: Item) -> None:
        await self._unit.run(
            _UPDATE_ITEM,
            {"b_sku": item.sku, "updated_at": self._unit.now(), **{name: getattr(item, name) for name in QUANTITIES}},
        )

    async def load_reservation(self, payment_id: str) -> Reservation | None:
        row = (await self._unit.run(_LOAD_RESERVATION, {"payment_id": payment_id})).first()
        if row is None:
            return None
        return Reservation(row.reservation_id, row.payment_id, row.sku, row.quantity, ReservationStatus(row.status))

    async def insert_reservation(self, reservation: Reservation) -> None:
        await self._unit.run(
            _INSERT_RESERVATION,
            {
                "reservation_id": reservation.reservation_id,
                "payment_id": reservation.payment_id,
                "sku": reservation.sku,
                "quantity": reservation.quantity,
                "status": reservation.status.value,
                "updated_at": self._unit.now(),
            },
        )

    async def save_reservation(self, reservation: Reservation) -> None:
        await self._unit.run(
            _UPDATE_RESERVATION,
            {
                "b_reservation_id": reservation.reservation_id,
                "status": reservation.status.value,
                "updated_at": self._unit.now(),
            },
        )

    async def find_receipt(self, receipt_id: str) -> Any:
        return (await self._connection.execute(sa.select(receipts).where(receipts.c.receipt_id == receipt_id))).first()

    async def insert_receipt(self, receipt_id: str, sku: str, quantity: int) -> None:
        await self._connection.execute(
            receipts.insert().values(receipt_id=receipt_id, sku=sku, quantity=quantity, received_at=self._unit.now())
        )


class InventoryUnit(UnitOfWork):
    """The inventory service's unit of work."""

    @functools.cached_property
    def inventory(self) -> InventoryRepository:
        return InventoryRepository(self)
