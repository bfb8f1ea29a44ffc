"""What the ledger's database tells the reconciliation (paysaga.core.reconciliation), read-only."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core.reconciliation import EntryRecord, HoldRecord, OutboxBacklog, utc
from paysaga.runtime.storage import read_only
from services.ledger.adapters.tables import accounts, holds, journal_entries, journal_lines, outbox
from services.ledger.domain import HoldStatus


async def holds_updated_since(connection: AsyncConnection, since: dt.datetime) -> list[HoldRecord]:
    """Every hold (and marker) last changed from since on, and every one still held, however old."""
    query = sa.select(
        holds.c.payment_id, holds.c.hold_id, holds.c.status, holds.c.amount_minor, holds.c.currency, holds.c.updated_at
    ).where(sa.or_(holds.c.updated_at >= since, holds.c.status == HoldStatus.HELD.value))
    return [
        HoldRecord(row.payment_id, row.hold_id, row.status, row.amount_minor, row.currency, utc(row.updated_at))
        for row in await connection.execute(query)
    ]


async def entries_between(connection: AsyncConnection, since: dt.datetime, until: dt.datetime) -> list[EntryRecord]:
    """Every journal entry made in [since, until), with its lines summed per currency."""
    in_range = sa.and_(journal_entries.c.created_at >= since, journal_entries.c.created_at < until)
    lines = (
        sa.select(
            journal_lines.c.entry_id,
            accounts.c.currency,
            sa.func.sum(journal_lines.c.amount_minor).label("sum_minor"),
            sa.func.sum(sa.case((journal_lines.c.amount_minor > 0, journal_lines.c.amount_minor), else_=0)).label(
                "moved_minor"
            ),
        )
        .join(accounts, accounts.c.account_id == journal_lines.c.account_id)
        .join(journal_entries, journal_entries.c.entry_id == journal_lines.c.entry_id)
        .where(in_range)
        .group_by(journal_lines.c.entry_id, accounts.c.currency)
    )
    sums: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for row in await connection.execute(lines):
        sums[row.entry_id].append((row.currency, int(row.sum_minor), int(row.moved_minor)))
    entries = sa.select(
        journal_entries.c.entry_id, journal_entries.c.kind, journal_entries.c.saga_id, journal_entries.c.created_at
    ).where(in_range)
    found = []
    for row in await connection.execute(entries):
        per_currency = sorted(sums.get(row.entry_id, []))
        moved = max(per_currency, key=lambda item: item[2], default=("", 0, 0))
        found.append(
            EntryRecord(
                row.entry_id,
                row.kind,
                row.saga_id,
                utc(row.created_at),
                tuple((currency, total) for currency, total, _ in per_currency),
                moved[2],
                moved[0],
            )
        )
    return found


async def backlog(connection: AsyncConnection, before: dt.datetime) -> OutboxBacklog:
    return await read_only.outbox_backlog(connection, outbox, before)
