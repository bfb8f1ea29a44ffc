"""The service's database engine (SQLAlchemy, async). SQLite by default, or PostgreSQL.

SQLite goes through paysaga.runtime.storage.sqlite_driver: statements run on the event loop's thread, and only
what waits (for another writer, for fsync) on the connection's own thread.

On SQLite every connection uses WAL (readers do not block the writer), synchronous=FULL (a
commit is on disk before it returns) and a busy timeout instead of immediate "database is
locked" errors. We issue BEGIN ourselves (the driver's implicit transactions are off): write
transactions (see paysaga.runtime.storage.unit_of_work) start with BEGIN IMMEDIATE, so they take the write lock
up front and cannot fail later on a lock upgrade.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from paysaga.runtime.storage import sqlite_driver

SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON")
# Set on a connection that will write; see paysaga.runtime.storage.unit_of_work.
WRITE_OPTION = "paysaga_write"


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # READ COMMITTED with explicit row locks (SELECT ... FOR UPDATE, in a fixed order) and a
        # bounded retry of conflicts; synchronous_commit stays on, the server's default.
        return create_async_engine(
            url,
            pool_pre_ping=True,
            pool_size=10,
            max_overflow=20,
            # Durable commits whatever the server's default: a commit returns once it is on disk.
            connect_args={"server_settings": {"synchronous_commit": "on"}},
        )
    if parsed.query:
        raise ValueError(f"SQLite URLs take no options here, got {sorted(parsed.query)}")
    database = parsed.database or ":memory:"
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # The driver's own implicit transactions would start only at the first write, so a handler's
    # reads would not be isolated from another writer: its connections are in autocommit mode and
    # we issue BEGIN ourselves, below.
    engine = create_async_engine(
        url, async_creator=sqlite_driver.connector(database, SQLITE_BUSY_TIMEOUT_MS, SQLITE_PRAGMAS)
    )

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        writes = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


# serialization_failure, deadlock_detected, unique_violation
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})


# connection_exception, insufficient_resources (e.g. too many clients), operator_intervention
# (shutdown, starting up), system_error
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})


def _sqlstate(error: BaseException) -> str | None:
    if not isinstance(error, DBAPIError):
        return None
    original = error.orig
    state = getattr(original, "sqlstate", None) or getattr(original, "pgcode", None)
    return str(state) if state else None


def is_retryable(error: BaseException) -> bool:
    """A conflict with a concurrent transaction: running the same transaction again can succeed."""
    return _sqlstate(error) in RETRYABLE_SQLSTATES


def is_unavailable(error: BaseException) -> bool:
    """The database cannot be reached or is not accepting work right now; nobody's fault but time's."""
    if isinstance(error, OSError | OperationalError | InterfaceError | SATimeoutError | DisconnectionError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    state = _sqlstate(error)
    return state is not None and state[:2] in UNAVAILABLE_SQLSTATE_CLASSES


async def check_database(engine: AsyncEngine) -> None:
    """Open a connection and run a trivial query, so a bad URL or unwritable file fails at start."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
