"""Retention on both backends: published outbox rows and handled inbox rows go once they can no
longer matter, in bounded batches; an unpublished event is never pruned, however old."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from paysaga.runtime.messaging.windows import DUPLICATE_WINDOW_S, STREAM_MAX_AGE_S
from paysaga.runtime.storage.retention import Retention, prune_once
from paysaga.runtime.storage.unit_of_work import Database
from tests.integration.counters import open_database

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def ago(**delta: float) -> dt.datetime:
    return NOW - dt.timedelta(**delta)


async def rows(database: Database, column: sa.Column) -> list[str]:  # type: ignore[type-arg]
    async with database.read() as connection:
        return sorted(str(value) for value in (await connection.execute(sa.select(column))).scalars())


async def test_only_what_can_no_longer_matter_is_pruned_in_batches(database_url: str) -> None:
    opened = await open_database(database_url)
    database = Database(opened.engine, opened.outbox.metadata, clock=lambda: NOW)
    outbox = [
        ("published-long-ago", ago(hours=3), ago(hours=3)),
        ("published-long-ago-2", ago(hours=2), ago(hours=2)),
        ("published-long-ago-3", ago(hours=2), ago(hours=1, minutes=1)),
        ("published-just-now", ago(hours=2), ago(minutes=5)),
        ("never-published", ago(days=30), None),
    ]
    inbox = [
        ("handled-9-days-ago", ago(days=9)),
        ("handled-8-days-ago", ago(days=8, minutes=1)),
        ("handled-today", ago(hours=1)),
    ]
    async with database.transaction() as unit:
        for event_id, created_at, published_at in outbox:
            await unit.connection.execute(
                database.outbox.insert().values(
                    event_id=event_id,
                    event_type="E",
                    saga_id="s",
                    subject="x",
                    payload=b"",
                    created_at=created_at,
                    published_at=published_at,
                )
            )
        for event_id, processed_at in inbox:
            await unit.connection.execute(
                database.inbox.insert().values(
                    event_id=event_id, event_type="E", saga_id="s", processed_at=processed_at
                )
            )

    deleted = await prune_once(database, Retention(), batch=2)

    assert deleted == {"outbox": 3, "inbox": 2}
    assert await rows(database, database.outbox.c.event_id) == ["never-published", "published-just-now"]
    assert await rows(database, database.inbox.c.event_id) == ["handled-today"]
    assert await prune_once(database, Retention(), batch=2) == {"outbox": 0, "inbox": 0}
    await database.engine.dispose()


def test_retention_never_drops_what_a_redelivery_or_a_republish_could_still_need() -> None:
    with pytest.raises(ValueError, match="duplicate window"):
        Retention(outbox_s=DUPLICATE_WINDOW_S - 1)
    with pytest.raises(ValueError, match="maximum age"):
        Retention(inbox_s=STREAM_MAX_AGE_S - 1)
    assert Retention().inbox_s > STREAM_MAX_AGE_S and Retention().outbox_s >= DUPLICATE_WINDOW_S
