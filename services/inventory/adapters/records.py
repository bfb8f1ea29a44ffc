"""What inventory's database tells the reconciliation (paysaga.core.reconciliation), read-only."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core.reconciliation import OutboxBacklog, ReservationRecord, utc
from paysaga.runtime.storage import read_only
from services.inventory.adapters.tables import outbox, reservations
from services.inventory.domain import ReservationStatus


async def reservations_updated_since(connection: AsyncConnection, since: dt.datetime) -> list[ReservationRecord]:
    """Every reservation (and tombstone) last changed from since on, and every one still reserved."""
    query = sa.select(
        reservations.c.payment_id,
        reservations.c.reservation_id,
        reservations.c.status,
        reservations.c.sku,
        reservations.c.quantity,
        reservations.c.updated_at,
    ).where(sa.or_(reservations.c.updated_at >= since, reservations.c.status == ReservationStatus.RESERVED.value))
    return [
        ReservationRecord(row.payment_id, row.reservation_id, row.status, row.sku, row.quantity, utc(row.updated_at))
        for row in await connection.execute(query)
    ]


async def backlog(connection: AsyncConnection, before: dt.datetime) -> OutboxBacklog:
    return await read_only.outbox_backlog(connection, outbox, before)
