"""SQLite for SQLAlchemy's asyncio engine, without a thread hop per statement.

aiosqlite runs every call (each execute, each fetch) on its own thread and wakes the event loop
when it is done: about 0.3 ms of CPU per statement, most of a handler's cost. Yet almost every
statement of ours is an indexed lookup or a one-row write that SQLite does in memory in
microseconds. So this connection runs statements on the event loop's thread, and hands to a
thread only what can wait on something else:

- ``BEGIN IMMEDIATE``, when another process holds the write lock: it is tried here first with no
  wait at all, and only if the lock is taken does the thread wait for it (up to the busy timeout);
- the ``COMMIT`` of a transaction that wrote, which waits for the disk (fsync).

That is one hand-off per write transaction instead of one per call, and none for reads. The
price: while SQLite runs a statement, the event loop waits. Ours are indexed and bounded (a page
of a list is at most 500 rows), so that is microseconds to a few milliseconds; a reader's rare
wait for a busy lock (in WAL, only during recovery) would hold the loop up to the busy timeout.
Each connection has one such thread, used by one call at a time; the event loop never touches
the connection while its thread does. It plugs into the ``sqlite+aiosqlite`` dialect through
``async_creator`` and offers the part of aiosqlite's interface that the dialect uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# Statements that may wait for another process's write lock: run on the connection's thread.
_WAITING_PREFIX = "BEGIN IMMEDIATE"


class ConnectionThread:
    """The one thread a connection hands its waits to, with the least machinery per call: a job
    is put on a queue and its result comes back to the event loop with one wake-up. A one-worker
    executor's future, its condition and the chaining of two futures cost about 70 µs of CPU more
    per commit (measured on one insert and its fsync: 0.275 against 0.205 ms). Daemonic, so that
    a connection nobody closed does not keep the process alive; a job cut short by the process's
    exit is a transaction that did not commit."""

    def __init__(self, name: str = "sqlite") -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, function: Callable[..., T], *arguments: Any) -> asyncio.Future[T]:
        """Run function(*arguments) on the thread; the future (of the running loop) gets its outcome."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((future, function, arguments))
        return future

    def stop(self) -> None:
        """The thread ends after the jobs already submitted."""
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, arguments = job
            try:
                outcome: tuple[Callable[..., None], Any] = (_set_result, function(*arguments))
            except BaseException as error:  # noqa: BLE001 - handed to the caller, as an executor does
                outcome = (_set_exception, error)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                future.get_loop().call_soon_threadsafe(outcome[0], future, outcome[1])


_Job = tuple["asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _set_result(future: asyncio.Future[T], result: T) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class InlineCursor:
    def __init__(self, connection: InlineConnection, cursor: sqlite3.Cursor) -> None:
        self._connection = connection
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_exception: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> InlineCursor:
        if sql.startswith(_WAITING_PREFIX):
            await self._connection.begin_writing(self._cursor, sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any] | dict[str, Any]]) -> InlineCursor:
        self._cursor.executemany(sql, rows)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class InlineConnection:
    def __init__(self, connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
        # The dialect checks this attribute (aiosqlite's name for the driver connection).
        self._connection = connection
        self._busy_timeout_ms = busy_timeout_ms
        self._thread = ConnectionThread()
        self._writing = False
        self._changes_before = connection.total_changes

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The sqlite3 connection itself, for statements run on the event loop's thread (see
        paysaga.runtime.storage.prepared); never while a call of ours runs on the thread."""
        return self._connection

    @property
    def isolation_level(self) -> str | None:
        return self._connection.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self, self._connection.cursor())

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction

    async def begin_immediate(self) -> None:
        """``BEGIN IMMEDIATE`` issued here rather than through SQLAlchemy (see
        paysaga.runtime.storage.backends.SQLiteBackend.writing)."""
        cursor = self._connection.cursor()
        try:
            await self.begin_writing(cursor, _WAITING_PREFIX)
        finally:
            cursor.close()

    async def begin_writing(self, cursor: sqlite3.Cursor, sql: str) -> None:
        """Take the write lock: at once if it is free (no hand-off), else wait for it on the thread."""
        self._connection.execute("PRAGMA busy_timeout = 0")
        try:
            cursor.execute(sql)
            taken = True
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            taken = False
        finally:
            self._connection.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        if not taken:
            await self.on_thread(cursor.execute, sql)
        self._writing = True

    async def on_thread(self, function: Callable[..., T], *arguments: Any) -> T:
        """Run a call on the connection's thread. If the caller is cancelled meanwhile, wait for
        the call anyway: the connection must not be used by two threads at once."""
        future = self._thread.submit(function, *arguments)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({future})  # never cancels the call, nor raises its error
            raise

    async def commit(self) -> None:
        wrote = self._writing or self._connection.total_changes != self._changes_before
        try:
            if wrote:
                await self.on_thread(self._connection.commit)
            else:
                self._connection.commit()
        finally:
            self._transaction_ended()

    async def rollback(self) -> None:
        try:
            self._connection.rollback()  # discards what the transaction wrote; no disk wait
        finally:
            self._transaction_ended()

    def _transaction_ended(self) -> None:
        self._writing = False
        self._changes_before = self._connection.total_changes

    async def create_function(self, *arguments: Any, **options: Any) -> None:
        self._connection.create_function(*arguments, **options)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close at once (also the dialect's terminate): nothing of ours is ever pending on the thread
        when the pool closes a connection."""
        try:
            self._connection.close()
        finally:
            self._thread.stop()


def connector(
    path: str, busy_timeout_ms: int, pragmas: Sequence[str]
) -> Callable[[], Coroutine[Any, Any, InlineConnection]]:
    """An ``async_creator`` for create_async_engine: connections in autocommit mode, so the
    engine's own BEGIN starts every transaction (see paysaga.runtime.storage.database), that wait up to
    busy_timeout_ms for another process's lock instead of failing at once, with the given
    PRAGMAs set."""

    async def connect() -> InlineConnection:
        connection = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        for pragma in pragmas:
            connection.execute(f"PRAGMA {pragma}")
        return InlineConnection(connection, busy_timeout_ms)

    return connect
