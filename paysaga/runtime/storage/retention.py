"""Keeping the outbox and the inbox bounded: rows are pruned once they can no longer matter.

- An outbox row, once published and older than the outbox retention (default 1 hour, at least the
  streams' duplicate window): the relay never publishes a published row again. Unpublished rows
  are never pruned, whatever their age.
- An inbox row (the id of an event already handled) older than the inbox retention (default 8 days,
  at least the streams' maximum age): JetStream can deliver an event again only while it keeps it,
  and it keeps none longer than that.

Every prune_interval_s each process deletes what is due, a bounded batch per transaction (a short
write turn on SQLite), until nothing is left; replicas sharing a database may prune together.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from paysaga.runtime.messaging.windows import DUPLICATE_WINDOW_S, STREAM_MAX_AGE_S
from paysaga.runtime.storage.unit_of_work import Database
from paysaga.runtime.tasks import sleep_or_stop

log = logging.getLogger(__name__)

OUTBOX_RETENTION_S = 3600.0
INBOX_RETENTION_S = STREAM_MAX_AGE_S + 24 * 3600.0
PRUNE_INTERVAL_S = 60.0
PRUNE_BATCH = 2000
# Bounds one round: a backlog of millions is pruned over several rounds, never in one go.
BATCHES_PER_ROUND_MAX = 50


@dataclass(frozen=True)
class Retention:
    outbox_s: float = OUTBOX_RETENTION_S
    inbox_s: float = INBOX_RETENTION_S
    interval_s: float = PRUNE_INTERVAL_S

    def __post_init__(self) -> None:
        if self.outbox_s < DUPLICATE_WINDOW_S:
            raise ValueError(
                f"the outbox retention must be at least the streams' duplicate window ({DUPLICATE_WINDOW_S} s), "
                f"got {self.outbox_s:g} s"
            )
        if self.inbox_s < STREAM_MAX_AGE_S:
            raise ValueError(
                f"the inbox retention must be at least the streams' maximum age ({STREAM_MAX_AGE_S} s): an event "
                f"can be delivered again while a stream keeps it; got {self.inbox_s:g} s"
            )
        if self.interval_s <= 0:
            raise ValueError(f"the prune interval must be positive, got {self.interval_s:g} s")


def _statements(database: Database[Any]) -> tuple[sa.Delete, sa.Delete]:
    outbox, inbox = database.outbox, database.inbox
    published = (
        sa.select(outbox.c.id)
        .where(outbox.c.published_at.is_not(None), outbox.c.published_at < sa.bindparam("before"))
        .order_by(outbox.c.id)
        .limit(sa.bindparam("limit"))
    )
    handled = (
        sa.select(inbox.c.event_id)
        .where(inbox.c.processed_at < sa.bindparam("before"))
        .order_by(inbox.c.processed_at)
        .limit(sa.bindparam("limit"))
    )
    # A subquery's rows, not a join: the same statement on SQLite and PostgreSQL.
    return (
        outbox.delete().where(outbox.c.id.in_(published.scalar_subquery())),
        inbox.delete().where(inbox.c.event_id.in_(handled.scalar_subquery())),
    )


async def prune_once(database: Database[Any], retention: Retention, batch: int = PRUNE_BATCH) -> dict[str, int]:
    """Delete what is due now; the rows deleted per table."""
    now = database.clock()
    prune_outbox, prune_inbox = _statements(database)
    deleted = {"outbox": 0, "inbox": 0}
    for table, statement, keep_s in (
        ("outbox", prune_outbox, retention.outbox_s),
        ("inbox", prune_inbox, retention.inbox_s),
    ):
        before = now - dt.timedelta(seconds=keep_s)
        for _ in range(BATCHES_PER_ROUND_MAX):
            async with database.transaction() as unit:
                result = await unit.connection.execute(statement, {"before": before, "limit": batch})
            deleted[table] += result.rowcount
            if result.rowcount < batch:
                break
    return deleted


async def run(database: Database[Any], retention: Retention, stop: asyncio.Event) -> None:
    """Prune every retention.interval_s until stop."""
    while not stop.is_set():
        deleted = await prune_once(database, retention)
        if any(deleted.values()):
            log.info("retention.pruned", extra={f"{table}_rows": count for table, count in deleted.items()})
        await sleep_or_stop(stop, retention.interval_s)
