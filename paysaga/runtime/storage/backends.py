"""What differs between SQLite and PostgreSQL, decided once per engine.

Every place that would ask "which database is this?" asks the engine's Backend instead:

- ``single_writer``: SQLite has one write transaction at a time, so writers take turns in the
  process (an asyncio lock, so they queue without holding a connection) and may share one
  transaction (group commit). PostgreSQL writers run concurrently, each in its own transaction.
- ``serialize(connection, key)``: until the transaction ends, nobody else in any process runs the
  part of a transaction that serializes on the same key (PostgreSQL: a transaction-level advisory
  lock; SQLite: nothing to do, there is one writer).
- ``snapshot(connection)``: a read transaction sees one consistent snapshot (PostgreSQL:
  REPEATABLE READ, read-only; SQLite: its BEGIN already does).
- ``exclusive(connection, key)``: a session-level lock around schema migrations, so replicas
  starting together migrate once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class Backend:
    """The defaults: a database whose writers run concurrently and which needs no help to read a
    snapshot or to serialize (overridden below for the two we run on)."""

    single_writer = False

    def __init__(self) -> None:
        self._write_lock = asyncio.Lock()

    def write_turn(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Held for the whole of a write transaction."""
        return self._write_lock if self.single_writer else contextlib.nullcontext()

    async def serialize(self, connection: AsyncConnection, key: str) -> None:
        """Until this transaction ends, others serializing on key wait."""

    async def snapshot(self, connection: AsyncConnection) -> None:
        """Make the transaction connection is about to begin read one consistent snapshot."""

    @contextlib.asynccontextmanager
    async def exclusive(self, connection: AsyncConnection, key: int) -> AsyncIterator[None]:
        """Across processes, one holder of key at a time (outside any transaction)."""
        yield


class SQLiteBackend(Backend):
    single_writer = True


class PostgreSQLBackend(Backend):
    _SERIALIZE = sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))")

    async def serialize(self, connection: AsyncConnection, key: str) -> None:
        await connection.execute(self._SERIALIZE, {"key": key})

    async def snapshot(self, connection: AsyncConnection) -> None:
        await connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)

    @contextlib.asynccontextmanager
    async def exclusive(self, connection: AsyncConnection, key: int) -> AsyncIterator[None]:
        await connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        await connection.commit()
        try:
            yield
        finally:
            await connection.rollback()
            await connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            await connection.commit()


BACKENDS: dict[str, type[Backend]] = {"sqlite": SQLiteBackend, "postgresql": PostgreSQLBackend}


def backend_of(engine: AsyncEngine) -> Backend:
    """The engine's backend; one per Database, so its write lock is per database."""
    return BACKENDS.get(engine.dialect.name, Backend)()
