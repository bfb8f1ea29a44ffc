"""Inventory's rules: SKUs with stock that is reserved, committed (sold), released or restocked.
Pure code, no I/O.

Invariant, asserted on every change: available + reserved + sold = received - restocked_out,
with every quantity non-negative. Stock is never created or lost, only moved between buckets.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ReservationStatus(StrEnum):
    RESERVED = "RESERVED"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    RESTOCKED = "RESTOCKED"
    # A cancellation arrived before any reservation: a late FundsHeld must not reserve.
    CANCELLED = "CANCELLED"


@dataclass
class Item:
    sku: str
    name: str
    unit_price_minor: int
    currency: str
    quantity_available: int = 0
    quantity_reserved: int = 0
    quantity_sold: int = 0
    quantity_received: int = 0
    quantity_restocked_out: int = 0
    # The client that sells it (paysaga.core.access); "" for an item only ops may stock.
    owner_client: str = ""

    def check(self) -> None:
        buckets = (self.quantity_available, self.quantity_reserved, self.quantity_sold, self.quantity_received)
        assert min(buckets) >= 0 and self.quantity_restocked_out >= 0, f"negative stock for {self.sku}"
        assert (
            self.quantity_available + self.quantity_reserved + self.quantity_sold
            == self.quantity_received - self.quantity_restocked_out
        ), f"stock of {self.sku} is not conserved"


@dataclass
class Reservation:
    reservation_id: str
    payment_id: str
    sku: str
    quantity: int
    status: ReservationStatus


def reservation_refusal(item: Item | None, sku: str, quantity: int, amount_minor: int, currency: str) -> str | None:
    """Why stock cannot be reserved for a purchase that holds amount_minor, or None if it can.

    The client names the amount; the item's price is inventory's. A purchase that holds less (or
    another currency) than the price of what it takes is refused, and the ledger releases the hold.
    """
    if item is None:
        return f"unknown SKU {sku}"
    price_minor = item.unit_price_minor * quantity
    if (amount_minor, currency) != (price_minor, item.currency):
        return (
            f"price mismatch: {quantity} x {sku} costs {price_minor} {item.currency}, "
            f"the payment is {amount_minor} {currency}"
        )
    if item.quantity_available < quantity:
        return f"out of stock: {sku} has {item.quantity_available} available, {quantity} requested"
    return None


def reserve(item: Item, reservation: Reservation) -> None:
    item.quantity_available -= reservation.quantity
    item.quantity_reserved += reservation.quantity
    item.check()


def commit(item: Item, reservation: Reservation) -> None:
    assert reservation.status is ReservationStatus.RESERVED
    item.quantity_reserved -= reservation.quantity
    item.quantity_sold += reservation.quantity
    reservation.status = ReservationStatus.COMMITTED
    item.check()


def release(item: Item, reservation: Reservation) -> None:
    assert reservation.status is ReservationStatus.RESERVED
    item.quantity_reserved -= reservation.quantity
    item.quantity_available += reservation.quantity
    reservation.status = ReservationStatus.RELEASED
    item.check()


def restock(item: Item, reservation: Reservation) -> None:
    """Return reserved or sold stock to available (a refund, or a cancel after the sale)."""
    if reservation.status is ReservationStatus.RESERVED:
        item.quantity_reserved -= reservation.quantity
    else:
        assert reservation.status is ReservationStatus.COMMITTED
        item.quantity_sold -= reservation.quantity
    item.quantity_available += reservation.quantity
    reservation.status = ReservationStatus.RESTOCKED
    item.check()


def receive(item: Item, quantity: int) -> None:
    item.quantity_received += quantity
    item.quantity_available += quantity
    item.check()
