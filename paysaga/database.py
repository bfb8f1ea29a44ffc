"""The service's database engine (SQLAlchemy, async). SQLite by default, PostgreSQL later.

On SQLite every connection uses WAL (readers do not block the writer), synchronous=FULL (a
commit is on disk before it returns) and a busy timeout instead of immediate "database is
locked" errors. We issue BEGIN ourselves (the driver's implicit transactions are off): write
transactions (see paysaga.unit_of_work) start with BEGIN IMMEDIATE, so they take the write lock
up front and cannot fail later on a lock upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 5000
# Set on a connection that will write; see paysaga.unit_of_work.
WRITE_OPTION = "paysaga_write"


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # READ COMMITTED with explicit row locks (SELECT ... FOR UPDATE, in a fixed order) and a
        # bounded retry of conflicts; synchronous_commit stays on, the server's default.
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure_sqlite(connection: Any, _record: Any) -> None:
        # The driver's own implicit transactions start only at the first write, so a handler's
        # reads would not be isolated from another writer: we issue BEGIN ourselves, below.
        connection.isolation_level = None
        cursor = connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "foreign_keys=ON",
            f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        writes = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


# serialization_failure, deadlock_detected, unique_violation
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})


def is_retryable(error: BaseException) -> bool:
    """A conflict with a concurrent transaction: running the same transaction again can succeed."""
    if not isinstance(error, DBAPIError):
        return False
    original = error.orig
    state = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    if state is None and original is not None:
        state = getattr(getattr(original, "__cause__", None), "sqlstate", None)
    return state in RETRYABLE_SQLSTATES


async def check_database(engine: AsyncEngine) -> None:
    """Open a connection and run a trivial query, so a bad URL or unwritable file fails at start."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
