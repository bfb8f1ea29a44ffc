"""Reading another process's database without any way to change it: what the reconciliation does.

A read-only engine refuses every write, whatever its user may do: SQLite connections run with
``query_only`` (and a missing file is an error, never a new empty database), PostgreSQL sessions
with ``default_transaction_read_only``. Each ``snapshot`` is one consistent view (SQLite: its
transaction; PostgreSQL: REPEATABLE READ), so records read together were true together.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from paysaga.core.reconciliation import OutboxBacklog, utc
from paysaga.runtime.storage.backends import backend_for_url, backend_of


def create_read_only_engine(url: str) -> AsyncEngine:
    return backend_for_url(url).create_read_only_engine(url)


@contextlib.asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One read-only transaction that sees a single consistent state of the database."""
    async with engine.connect() as connection:
        await backend_of(engine).snapshot(connection)
        async with connection.begin():
            yield connection


@contextlib.asynccontextmanager
async def reading(url: str) -> AsyncIterator[AsyncConnection]:
    """A read-only engine on url, for one snapshot, disposed after it."""
    engine = create_read_only_engine(url)
    try:
        async with snapshot(engine) as connection:
            yield connection
    finally:
        await engine.dispose()


async def outbox_backlog(connection: AsyncConnection, outbox: sa.Table, before: dt.datetime) -> OutboxBacklog:
    """The events written before before that the relay has not yet published."""
    row = (
        await connection.execute(
            sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(
                outbox.c.published_at.is_(None), outbox.c.created_at < before
            )
        )
    ).one()
    return OutboxBacklog(int(row[0]), None if row[1] is None else utc(row[1]))
