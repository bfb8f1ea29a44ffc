"""What each service's database tells the nightly reconciliation about a purchase.

Each service reads its own tables into these records (``services.<service>.adapters.records``),
read-only, so the reconciliation compares three databases without knowing any of their schemas.
Times are UTC; money is integer minor units and a currency code.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


def utc(moment: dt.datetime) -> dt.datetime:
    """A time read back from a database, as UTC (SQLite hands back naive times, written as UTC)."""
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    payment_id: str
    status: str
    amount_minor: int
    currency: str
    sku: str
    quantity: int
    created_at: dt.datetime
    updated_at: dt.datetime
    deadline_at: dt.datetime


@dataclass(frozen=True, slots=True)
class HoldRecord:
    payment_id: str
    hold_id: str
    status: str
    amount_minor: int
    currency: str
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """A journal entry: its lines' sum per currency (zero when it balances) and what it moved."""

    entry_id: str
    kind: str
    saga_id: str
    created_at: dt.datetime
    sums_minor: tuple[tuple[str, int], ...]
    # The sum of its positive lines, and their currency: the amount it moved.
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class ReservationRecord:
    payment_id: str
    reservation_id: str
    status: str
    sku: str
    quantity: int
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """Events a service has written but not yet published: its stream is behind its database."""

    count: int
    oldest_at: dt.datetime | None
