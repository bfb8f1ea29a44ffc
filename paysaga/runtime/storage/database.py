"""The service's database engine (SQLAlchemy, async), SQLite by default or PostgreSQL, made by
its backend (paysaga.runtime.storage.backends); and what a database error means: a conflict worth
retrying, or the database being unavailable.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from paysaga.runtime.storage.backends import ReplicaUnavailable, backend_for_url


def create_engine(url: str) -> AsyncEngine:
    """An engine for url, made the way its backend needs (paysaga.runtime.storage.backends)."""
    return backend_for_url(url).create_engine(url)


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
    """The database cannot be reached or is not accepting work right now (its synchronous standby
    gone included); nobody's fault but time's."""
    if isinstance(error, ReplicaUnavailable):
        return True
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
