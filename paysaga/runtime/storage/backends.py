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
  starting together migrate once;
- ``create_engine(url)``: how its engine is made; ``create_read_only_engine(url)``: one that can
  change nothing (paysaga.runtime.storage.read_only).

SQLite goes through paysaga.runtime.storage.sqlite_driver: statements run on the event loop's
thread, and only what waits (for another writer, for fsync) on the connection's own thread. Every
connection uses WAL (readers do not block the writer), synchronous=FULL (a commit is on disk
before it returns) and a busy timeout instead of immediate "database is locked" errors. We issue
BEGIN ourselves (the driver's implicit transactions are off): write transactions (see
paysaga.runtime.storage.unit_of_work) start with BEGIN IMMEDIATE, so they take the write lock up
front and cannot fail later on a lock upgrade, and all run on one connection that the database
holds (``SQLiteBackend.writing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction, create_async_engine

from paysaga.runtime.storage import sqlite_driver
from paysaga.runtime.storage.prepared import SQLiteRunner, StatementRunner

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON")
# Set on a connection that will write; see paysaga.runtime.storage.unit_of_work.
WRITE_OPTION = "paysaga_write"
READ_ONLY_CONNECT_TIMEOUT_S = 10


# How stale a write's view of the synchronous standbys may be, and how long a commit may wait for
# one before the write is answered as unavailable (together under 2 s).
REPLICATION_CHECK_INTERVAL_S = 0.5
COMMIT_WAIT_MAX_S = 1.2
REPLICATION_POLL_S = 0.05


class DatabaseMissing(Exception):
    """The database named by a URL does not exist."""


def create_sqlite_engine(url: str, pragmas: tuple[str, ...] = SQLITE_PRAGMAS) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.query:
        raise ValueError(f"SQLite URLs take no options here, got {sorted(parsed.query)}")
    database = parsed.database or ":memory:"
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # The driver's own implicit transactions would start only at the first write, so a handler's
    # reads would not be isolated from another writer: its connections are in autocommit mode and
    # we issue BEGIN ourselves, below.
    engine = create_async_engine(url, async_creator=sqlite_driver.connector(database, SQLITE_BUSY_TIMEOUT_MS, pragmas))

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Any) -> None:
        driver = connection.connection.driver_connection
        if isinstance(driver, sqlite_driver.InlineConnection) and driver.in_transaction:
            return  # the write connection's transaction, begun below SQLAlchemy (SQLiteBackend.writing)
        writes = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


def create_read_only_sqlite_engine(url: str) -> AsyncEngine:
    """Reading a database another process writes: every write refused (query_only), and a missing
    file an error, never a new empty database."""
    database = make_url(url).database or ""
    if not database or database == ":memory:" or not Path(database).is_file():
        raise DatabaseMissing(f"no SQLite database at {database or '(no path)'}")
    return create_sqlite_engine(url, pragmas=("query_only=ON",))


def create_read_only_server_engine(url: str) -> AsyncEngine:
    """Reading a database server's database: every transaction read-only, one connection."""
    return create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        connect_args={
            "timeout": READ_ONLY_CONNECT_TIMEOUT_S,
            "server_settings": {"default_transaction_read_only": "on", "application_name": "paysaga-reconcile"},
        },
    )


def create_server_engine(url: str) -> AsyncEngine:
    """A database server's (PostgreSQL): READ COMMITTED with explicit row locks (SELECT ... FOR
    UPDATE, in a fixed order) and a bounded retry of conflicts."""
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        # Durable commits whatever the server's default: a commit returns once it is on disk and,
        # when the server names synchronous standbys, once they have applied it (readable there).
        # Without standbys this is the same as "on".
        connect_args={"server_settings": {"synchronous_commit": "remote_apply"}},
    )


class Backend:
    """The defaults: a database server whose writers run concurrently and which needs no help to
    read a snapshot or to serialize (overridden below for the two we run on)."""

    single_writer = False

    @staticmethod
    def create_engine(url: str) -> AsyncEngine:
        return create_server_engine(url)

    @staticmethod
    def create_read_only_engine(url: str) -> AsyncEngine:
        return create_read_only_server_engine(url)

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

    async def admit_write(self, engine: AsyncEngine) -> None:
        """Raise ReplicaUnavailable when a write could not be made durable as configured now."""

    @contextlib.asynccontextmanager
    async def writing(self, engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, StatementRunner]]:
        """A write transaction's connection, and what runs prepared statements in it: committed
        when the block ends, rolled back if it raises. Called in the write turn."""
        async with engine.connect() as connection:
            await connection.execution_options(**{WRITE_OPTION: True})
            transaction = await connection.begin()
            try:
                yield connection, StatementRunner(connection)
            except BaseException:
                # The error that ended the work is what matters; a connection already broken
                # cannot roll back (the server drops the transaction with it).
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            await self.commit(connection, transaction)

    async def commit(self, connection: AsyncConnection, transaction: AsyncTransaction) -> None:
        await transaction.commit()

    async def replicated(self, engine: AsyncEngine) -> bool:
        """Whether everything committed so far is on every replica a commit waits for."""
        return True


@dataclass
class _Writer:
    """SQLite's write connection, held from the first write until the engine is disposed."""

    connection: AsyncConnection
    driver: sqlite_driver.InlineConnection
    runner: SQLiteRunner


class SQLiteBackend(Backend):
    """One writer at a time, so one write connection, held: a transaction on it is BEGIN
    IMMEDIATE, the work, COMMIT, issued on the driver's connection (paysaga.runtime.storage.sqlite_driver)
    without a pool checkout, SQLAlchemy's transaction bookkeeping or its greenlet hops around
    them: 0.2 ms of CPU per transaction instead of 0.5. The connection's page cache also stays
    warm (a connection that another one wrote behind reads its pages again).

    SQLAlchemy runs the transaction's other statements on the same connection: their first one
    makes SQLAlchemy begin a transaction of its own, which the engine's BEGIN listener leaves
    alone when the driver is already in one, and which SQLAlchemy then believes stays open (its
    savepoints, for a group commit, work in it). A transaction that raised is rolled back through
    SQLAlchemy, so its view starts clean again; a connection that fails to begin, commit or roll
    back is dropped, and the next write takes a new one."""

    single_writer = True

    def __init__(self) -> None:
        super().__init__()
        self._writer: _Writer | None = None
        self._holds = True  # False for an engine whose connections are not sqlite_driver's

    @staticmethod
    def create_engine(url: str) -> AsyncEngine:
        return create_sqlite_engine(url)

    @staticmethod
    def create_read_only_engine(url: str) -> AsyncEngine:
        return create_read_only_sqlite_engine(url)

    @contextlib.asynccontextmanager
    async def writing(self, engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, StatementRunner]]:
        writer = self._writer or (await self._hold(engine) if self._holds else None)
        if writer is None:  # an engine made elsewhere (tests, tools): SQLAlchemy's own way
            async with super().writing(engine) as opened:
                yield opened
            return
        try:
            await writer.driver.begin_immediate()
        except sqlite3.Error as error:
            await self._drop(writer)
            raise DBAPIError.instance("BEGIN IMMEDIATE", None, error, sqlite3.Error) from error
        try:
            yield writer.connection, writer.runner
        except BaseException:
            await self._roll_back(writer)
            raise
        try:
            await writer.driver.commit()
        except BaseException as error:
            await self._roll_back(writer)
            if isinstance(error, sqlite3.Error):
                raise DBAPIError.instance("COMMIT", None, error, sqlite3.Error) from error
            raise

    async def _roll_back(self, writer: _Writer) -> None:
        """After an error (which is what matters, so this raises none of its own)."""
        try:
            await writer.driver.rollback()  # discards what the transaction wrote; no disk wait
            if writer.connection.in_transaction():
                await writer.connection.rollback()  # SQLAlchemy's view of it (and its savepoints)
        except Exception:  # noqa: BLE001 - a connection that cannot roll back is not used again
            await self._drop(writer)

    async def _hold(self, engine: AsyncEngine) -> _Writer | None:
        connection = await engine.connect()
        driver = (await connection.get_raw_connection()).driver_connection
        if not isinstance(driver, sqlite_driver.InlineConnection):
            await connection.close()
            self._holds = False
            return None
        if not event.contains(engine.sync_engine, "engine_disposed", self._release):
            event.listen(engine.sync_engine, "engine_disposed", self._release)
        self._writer = _Writer(connection, driver, SQLiteRunner(connection, driver.sqlite))
        return self._writer

    async def _drop(self, writer: _Writer) -> None:
        self._writer = None
        with contextlib.suppress(Exception):
            await writer.connection.invalidate()
            await writer.connection.close()

    def _release(self, _engine: Any) -> None:
        """On engine.dispose() (in SQLAlchemy's greenlet): close the held connection too, which a
        pool's disposal leaves open, being checked out."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.connection.sync_connection.invalidate()  # type: ignore[union-attr]
                writer.connection.sync_connection.close()  # type: ignore[union-attr]


class ReplicaUnavailable(Exception):
    """The server is configured to wait for a synchronous standby and none is streaming: a commit
    would wait until one returns, so writes are refused meanwhile (quickly, not hanging)."""


@dataclass(frozen=True)
class Replication:
    required: bool  # synchronous_standby_names is set: a commit waits for a standby
    visible: bool  # this role may see the standbys' state (a superuser, or pg_monitor)
    streaming: int  # synchronous (or quorum) standbys streaming now
    checked_at: float


class PostgreSQLBackend(Backend):
    _SERIALIZE = sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))")
    # Sees the standbys' progress as a superuser or a member of pg_monitor (pg_read_all_stats).
    _REPLICATION = sa.text(
        "SELECT current_setting('synchronous_standby_names') <> '' AS required,"
        " pg_has_role('pg_read_all_stats', 'USAGE') AS sees_standbys,"
        " count(*) FILTER (WHERE state = 'streaming') AS streaming"
        " FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')"
    )
    # On the standby's disk is what a failover keeps (its replay position is reported lazily when idle).
    _FLUSHED = sa.text(
        "SELECT COALESCE(max(flush_lsn) >= CAST(CAST(:target AS text) AS pg_lsn), false)"
        " FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum') AND state = 'streaming'"
    )

    def __init__(self) -> None:
        super().__init__()
        self._replication: Replication | None = None
        self._looking = asyncio.Lock()
        # A commit given up while waiting for the standby: until the standby has it, nothing is
        # answered as done (a retry that finds that commit writes nothing, so would not wait).
        self._unconfirmed = False

    async def replication(self, engine: AsyncEngine, max_age_s: float = REPLICATION_CHECK_INTERVAL_S) -> Replication:
        """The standbys' state, read at most every max_age_s, by one caller at a time (a write
        asks before every transaction)."""
        async with self._looking:
            now = time.monotonic()
            if self._replication is None or now - self._replication.checked_at >= max_age_s:
                async with engine.connect() as connection:
                    row = (await connection.execute(self._REPLICATION)).one()
                self._replication = Replication(bool(row.required), bool(row.sees_standbys), int(row.streaming), now)
            return self._replication

    async def admit_write(self, engine: AsyncEngine) -> None:
        replication = await self.replication(engine)
        if replication.required and not replication.visible:
            log.error("database.standby_not_visible", extra={"hint": "grant the service's role pg_monitor"})
            raise ReplicaUnavailable("the database's synchronous standby cannot be seen: writes are refused")
        if replication.required and replication.streaming == 0:
            raise ReplicaUnavailable(
                "no synchronous standby is streaming from the database: writes are refused until one is"
            )
        if self._unconfirmed:
            if not await self.replicated(engine):
                raise ReplicaUnavailable("the synchronous standby is catching up: writes are refused until it has")
            self._unconfirmed = False

    async def commit(self, connection: AsyncConnection, transaction: AsyncTransaction) -> None:
        """Commit; when the commit waits for a synchronous standby that has gone (since the last
        look), stop waiting after COMMIT_WAIT_MAX_S: the transaction is then committed here but not
        confirmed there, which ReplicaUnavailable says. Its events wait for the standby (see
        replicated), and a client's retry with the same idempotency key finds it."""
        # What admit_write saw just before: looking again here would take a second connection
        # while this one is held.
        if self._replication is None or not self._replication.required:
            await transaction.commit()
            return
        try:
            await asyncio.wait_for(transaction.commit(), COMMIT_WAIT_MAX_S)
        except TimeoutError:
            await connection.invalidate()
            self._replication = None
            self._unconfirmed = True
            raise ReplicaUnavailable(
                "no synchronous standby confirmed the commit in time: it is on the primary, not yet on a standby"
            ) from None

    async def replicated(self, engine: AsyncEngine) -> bool:
        """Whether a synchronous standby has on its disk everything committed before this call
        (the WAL position now), waiting up to COMMIT_WAIT_MAX_S for it to catch up."""
        if not (await self.replication(engine)).required:
            return True
        deadline = time.monotonic() + COMMIT_WAIT_MAX_S
        async with engine.connect() as connection:
            target = await connection.scalar(sa.text("SELECT pg_current_wal_lsn()::text"))
            while True:
                if await connection.scalar(self._FLUSHED, {"target": target}):
                    return True
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(REPLICATION_POLL_S)

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


def backend_for_url(url: str) -> type[Backend]:
    return BACKENDS.get(make_url(url).get_backend_name(), Backend)


def backend_of(engine: AsyncEngine) -> Backend:
    """The engine's backend; one per Database, so its write lock is per database."""
    return BACKENDS.get(engine.dialect.name, Backend)()
