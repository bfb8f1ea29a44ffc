"""What payments' database tells the reconciliation (paysaga.core.reconciliation), read-only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core.reconciliation import OutboxBacklog, PaymentRecord, utc
from paysaga.runtime.storage import read_only
from services.payments import domain
from services.payments.adapters.tables import outbox, payments

# Ids per IN (...) list: well under SQLite's and asyncpg's limits on bound parameters.
IDS_PER_QUERY = 500
TERMINAL = [status.value for status in domain.TERMINAL]
_COLUMNS = (
    payments.c.payment_id,
    payments.c.status,
    payments.c.amount_minor,
    payments.c.currency,
    payments.c.sku,
    payments.c.quantity,
    payments.c.created_at,
    payments.c.updated_at,
    payments.c.deadline_at,
)


def _record(row: Any) -> PaymentRecord:
    return PaymentRecord(
        row.payment_id,
        row.status,
        row.amount_minor,
        row.currency,
        row.sku,
        row.quantity,
        utc(row.created_at),
        utc(row.updated_at),
        utc(row.deadline_at),
    )


async def created_between(connection: AsyncConnection, since: dt.datetime, until: dt.datetime) -> list[PaymentRecord]:
    """Every payment created in [since, until), and every older one that has not ended."""
    query = sa.select(*_COLUMNS).where(
        payments.c.created_at < until,
        sa.or_(payments.c.created_at >= since, payments.c.status.not_in(TERMINAL)),
    )
    return [_record(row) for row in await connection.execute(query)]


async def by_ids(connection: AsyncConnection, payment_ids: Collection[str]) -> list[PaymentRecord]:
    """The payments of these ids that exist, whenever created."""
    ids = sorted(payment_ids)
    found = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        query = sa.select(*_COLUMNS).where(payments.c.payment_id.in_(ids[start : start + IDS_PER_QUERY]))
        found += [_record(row) for row in await connection.execute(query)]
    return found


async def backlog(connection: AsyncConnection, before: dt.datetime) -> OutboxBacklog:
    return await read_only.outbox_backlog(connection, outbox, before)
