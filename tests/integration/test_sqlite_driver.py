"""The SQLite connection that runs statements on the event loop (what waits must not block the loop),
and the write connection a database holds on it."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from paysaga.runtime.storage import backends
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.prepared import Prepared
from paysaga.runtime.storage.sqlite_driver import ConnectionThread, InlineConnection
from paysaga.runtime.storage.unit_of_work import Database
from tests.integration.counters import counters, open_database


async def _database(path: Path) -> Database:
    return await open_database(f"sqlite+aiosqlite:///{path}")


async def test_a_writer_waiting_for_another_process_lock_leaves_the_event_loop_free(tmp_path: Path) -> None:
    # Two engines on one file are two processes as far as SQLite's lock is concerned.
    holder, waiter = await _database(tmp_path / "db.sqlite"), await _database(tmp_path / "db.sqlite")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        async with holder.transaction() as unit:
            await unit.connection.execute(counters.insert().values(name="first", value=1))
            waiting = asyncio.create_task(_insert(waiter, "second"))
            await asyncio.sleep(0.3)
            assert not waiting.done(), "the second writer got in while the first held the write lock"
            ticks_while_waiting = ticks
        await asyncio.wait_for(waiting, timeout=5)
    finally:
        ticker.cancel()
    # The loop kept running (about 30 ticks in 0.3 s) while the second writer waited for the lock.
    assert ticks_while_waiting >= 10
    async with holder.read() as connection:
        assert dict((await connection.execute(sa.select(counters.c.name, counters.c.value))).all()) == {
            "first": 1,
            "second": 1,
        }
    for database in (holder, waiter):
        await database.engine.dispose()


async def _insert(database: Database, name: str) -> None:
    async with database.transaction() as unit:
        await unit.connection.execute(counters.insert().values(name=name, value=1))


async def test_a_transaction_cancelled_while_committing_leaves_a_usable_connection(tmp_path: Path) -> None:
    database = await _database(tmp_path / "db.sqlite")
    # Cancel each write at a different point, the commit included; whatever the point, the next
    # transactions on the same pooled connection work, and each write is either whole or absent.
    for delay_s in (0, 0.0002, 0.0005, 0.001, 0.002, 0.005):
        task = asyncio.create_task(_insert(database, f"n{delay_s}"))
        await asyncio.sleep(delay_s)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _insert(database, "after")
    async with database.read() as connection:
        names = set((await connection.scalars(sa.select(counters.c.name))).all())
        values = set((await connection.scalars(sa.select(counters.c.value))).all())
    assert "after" in names
    assert values == {1}
    await database.engine.dispose()


async def test_a_write_is_on_disk_when_the_transaction_returns(tmp_path: Path) -> None:
    database = await _database(tmp_path / "db.sqlite")
    await _insert(database, "kept")
    # A fresh engine (a restarted process) sees it: the commit went through, not just a cache.
    await database.engine.dispose()
    reopened = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with reopened.connect() as connection:
        assert await connection.scalar(sa.select(counters.c.value).where(counters.c.name == "kept")) == 1
    await reopened.dispose()


def test_an_sqlite_url_with_options_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="take no options"):
        create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}?mode=ro")


async def _driver(database: Database) -> sqlite3.Connection:
    async with database.transaction() as unit:
        driver = (await unit.connection.get_raw_connection()).driver_connection
        assert isinstance(driver, InlineConnection)
        return driver.sqlite


async def test_writes_share_one_held_connection_which_disposing_the_engine_closes(tmp_path: Path) -> None:
    database = await _database(tmp_path / "db.sqlite")
    first = await _driver(database)
    await _insert(database, "a")
    assert await _driver(database) is first

    await database.engine.dispose()

    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        first.execute("SELECT 1")
    await _insert(database, "b")  # the engine still works: the next write holds a new connection
    assert await _driver(database) is not first
    async with database.read() as connection:
        assert set((await connection.scalars(sa.select(counters.c.name))).all()) == {"a", "b"}
    await database.engine.dispose()


async def test_a_failed_write_leaves_nothing_and_the_held_connection_usable(tmp_path: Path) -> None:
    database = await _database(tmp_path / "db.sqlite")
    # Through SQLAlchemy and through prepared statements, with a savepoint that failed inside.
    insert = Prepared(counters.insert())
    with pytest.raises(RuntimeError):
        async with database.transaction() as unit:
            await unit.run(insert, {"name": "prepared", "value": 1})
            await unit.connection.execute(counters.insert().values(name="alchemy", value=1))
            raise RuntimeError("the handler failed half-way")
    async with database.transaction() as unit:
        with contextlib.suppress(RuntimeError):
            async with unit.connection.begin_nested():
                await unit.run(insert, {"name": "undone", "value": 1})
                raise RuntimeError("one item of a group commit failed")
        await unit.run(insert, {"name": "kept", "value": 1})
        await unit.connection.execute(counters.insert().values(name="kept too", value=1))
    await _insert(database, "after")

    async with database.read() as connection:
        names = set((await connection.scalars(sa.select(counters.c.name))).all())
    assert names == {"kept", "kept too", "after"}
    await database.engine.dispose()


async def test_a_write_that_cannot_get_the_lock_fails_as_a_database_error_and_the_next_one_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "SQLITE_BUSY_TIMEOUT_MS", 200)
    holder, waiter = await _database(tmp_path / "db.sqlite"), await _database(tmp_path / "db.sqlite")
    await _insert(waiter, "before")
    async with holder.transaction() as unit:
        await unit.connection.execute(counters.insert().values(name="holder", value=1))
        with pytest.raises(OperationalError, match="locked"):
            await _insert(waiter, "refused")
    await _insert(waiter, "after")

    async with waiter.read() as connection:
        assert set((await connection.scalars(sa.select(counters.c.name))).all()) == {"before", "holder", "after"}
    for database in (holder, waiter):
        await database.engine.dispose()


async def test_the_connection_thread_hands_back_results_and_errors_and_goes_on_after_a_failure() -> None:
    thread = ConnectionThread()
    try:
        assert await thread.submit(sum, (1, 2, 3)) == 6
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await thread.submit(_raise, sqlite3.OperationalError("database is locked"))
        assert await thread.submit(max, 4, 9) == 9
    finally:
        thread.stop()


def test_a_job_that_ends_after_its_event_loop_closed_does_not_end_the_connection_thread() -> None:
    thread = ConnectionThread()
    release = threading.Event()

    async def leave_a_job_running() -> None:
        thread.submit(release.wait, 5.0)  # nobody awaits it: its loop closes first

    try:
        asyncio.run(leave_a_job_running())
        release.set()

        async def next_job() -> int:
            return await asyncio.wait_for(thread.submit(len, "four"), timeout=5.0)

        assert asyncio.run(next_job()) == 4
    finally:
        thread.stop()


def _raise(error: Exception) -> None:
    raise error
