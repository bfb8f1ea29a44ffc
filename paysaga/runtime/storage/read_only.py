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
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from paysaga.core.reconciliation import OutboxBacklog, utc
from paysaga.runtime.storage import sqlite_driver
from paysaga.runtime.storage.backends import SQLITE_BUSY_TIMEOUT_MS

CONNECT_TIMEOUT_S = 10


class DatabaseMissing(Exception):
    """The database named by a URL does not exist."""


def create_read_only_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if not database or database == ":memory:" or not Path(database).is_file():
            raise DatabaseMissing(f"no SQLite database at {database or '(no path)'}")
        engine = create_async_engine(
            url, async_creator=sqlite_driver.connector(database, SQLITE_BUSY_TIMEOUT_MS, ("query_only=ON",))
        )

        # The driver's connections are in autocommit mode: without a BEGIN, each statement would
        # see the database as it is then, not one snapshot.
        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

        return engine
    return create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        connect_args={
            "timeout": CONNECT_TIMEOUT_S,
            "server_settings": {"default_transaction_read_only": "on", "application_name": "paysaga-reconcile"},
        },
    )


@contextlib.asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One read-only transaction that sees a single consistent state of the database."""
    async with engine.connect() as connection:
        if engine.dialect.name != "sqlite":
            await connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        async with connection.begin():
            yield connection


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
