"""Inventory's rules as pure code: stock moves between buckets and is never created or lost."""

from __future__ import annotations

import pytest

from services.inventory import domain
from services.inventory.domain import Item, Reservation, ReservationStatus


def stocked(quantity: int = 5) -> Item:
    item = Item("mug", "Blue mug", 1250, "EUR")
    domain.receive(item, quantity)
    return item


def buckets(item: Item) -> tuple[int, int, int, int]:
    return item.quantity_available, item.quantity_reserved, item.quantity_sold, item.quantity_received


def test_reserve_commit_then_restock_keeps_the_stock_conserved() -> None:
    item = stocked()
    reservation = Reservation("r1", "p1", "mug", 2, ReservationStatus.RESERVED)

    domain.reserve(item, reservation)
    assert buckets(item) == (3, 2, 0, 5)
    domain.commit(item, reservation)
    assert buckets(item) == (3, 0, 2, 5)
    domain.restock(item, reservation)
    assert buckets(item) == (5, 0, 0, 5)
    assert reservation.status is ReservationStatus.RESTOCKED


def test_release_returns_a_reservation_to_available() -> None:
    item = stocked()
    reservation = Reservation("r1", "p1", "mug", 5, ReservationStatus.RESERVED)
    domain.reserve(item, reservation)

    domain.release(item, reservation)

    assert buckets(item) == (5, 0, 0, 5)
    assert reservation.status is ReservationStatus.RELEASED


def test_a_refund_that_overtakes_the_commit_restocks_from_reserved() -> None:
    item = stocked()
    reservation = Reservation("r1", "p1", "mug", 1, ReservationStatus.RESERVED)
    domain.reserve(item, reservation)

    domain.restock(item, reservation)

    assert buckets(item) == (5, 0, 0, 5)


def test_reservation_refusals_say_why() -> None:
    assert domain.reservation_refusal(None, "cup", 1, 1250, "EUR") == "unknown SKU cup"
    assert (
        domain.reservation_refusal(stocked(2), "mug", 3, 3750, "EUR")
        == "out of stock: mug has 2 available, 3 requested"
    )
    assert domain.reservation_refusal(stocked(2), "mug", 2, 2500, "EUR") is None


@pytest.mark.parametrize(("amount_minor", "currency"), [(1, "EUR"), (2499, "EUR"), (2501, "EUR"), (2500, "USD")])
def test_a_purchase_must_hold_exactly_the_price_of_what_it_takes(amount_minor: int, currency: str) -> None:
    refusal = domain.reservation_refusal(stocked(5), "mug", 2, amount_minor, currency)
    assert refusal == f"price mismatch: 2 x mug costs 2500 EUR, the payment is {amount_minor} {currency}"


def test_reserving_more_than_available_trips_the_invariant() -> None:
    with pytest.raises(AssertionError, match="negative stock"):
        domain.reserve(stocked(1), Reservation("r1", "p1", "mug", 2, ReservationStatus.RESERVED))
