"""Transactions on a real SQLite file, with two writers as two processes would be."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from paysaga.core.errors import FailedPrecondition
from paysaga.core.eventing import new_event
from paysaga.events.v1 import events_pb2
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.group_commit import GroupCommit
from paysaga.runtime.storage.unit_of_work import Database, UnitOfWork
from tests.integration.counters import counters, metadata, open_database


async def test_two_writers_on_one_database_never_lose_an_update(database_url: str) -> None:
    # Two engines and two Database objects: separate locks, as separate processes would have.
    engines = [create_engine(database_url), create_engine(database_url)]
    async with engines[0].begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.execute(counters.insert().values(name="n", value=0))
    databases = [Database(engine, metadata) for engine in engines]

    async def increment(database: Database, times: int) -> None:
        for _ in range(times):
            async with database.transaction() as unit:
                # Read for update, as every handler does: a row lock on PostgreSQL, the writer lock on SQLite.
                value = await unit.connection.scalar(
                    sa.select(counters.c.value).where(counters.c.name == "n").with_for_update()
                )
                await asyncio.sleep(0)  # let the other writer run between the read and the write
                await unit.connection.execute(counters.update().values(value=int(value or 0) + 1))

    await asyncio.gather(increment(databases[0], 40), increment(databases[1], 40))

    async with databases[0].read() as connection:
        assert await connection.scalar(sa.select(counters.c.value)) == 80
    for engine in engines:
        await engine.dispose()


async def test_a_failed_transaction_leaves_nothing_behind_not_even_its_events(database_url: str) -> None:
    database = await open_database(database_url)

    try:
        async with database.transaction() as unit:
            await unit.connection.execute(counters.insert().values(name="x", value=1))
            unit.emit_envelope(
                new_event(producer="t", saga_id="s", payload=events_pb2.PaymentCompleted(payment_id="s"))
            )
            raise RuntimeError("the handler failed half-way")
    except RuntimeError:
        pass

    async with database.read() as connection:
        assert await connection.scalar(sa.select(sa.func.count()).select_from(counters)) == 0
        assert await connection.scalar(sa.select(sa.func.count()).select_from(database.outbox)) == 0
    await database.engine.dispose()


async def test_a_conflicting_insert_is_retried_and_then_sees_the_winner(database_url: str) -> None:
    engine = create_engine(database_url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    databases = [Database(engine, metadata), Database(create_engine(database_url), metadata)]

    async def insert_once(unit: UnitOfWork) -> str:
        found = await unit.connection.scalar(sa.select(counters.c.name).where(counters.c.name == "k"))
        if found is not None:
            return "replayed"
        await asyncio.sleep(0.05)  # both look before either inserts
        await unit.connection.execute(counters.insert().values(name="k", value=1))
        return "created"

    outcomes = await asyncio.gather(*(database.retrying(insert_once) for database in databases))

    assert sorted(outcomes) == ["created", "replayed"]
    for database in databases:
        await database.engine.dispose()


async def test_concurrent_requests_share_commits_and_each_gets_its_own_answer(database_url: str) -> None:
    database = await open_database(database_url)
    commits: list[int] = []
    database.on_commit(lambda unit: commits.append(len(unit.written)))
    group: GroupCommit[UnitOfWork, str] = GroupCommit(database)

    def insert(name: str) -> Callable[[UnitOfWork], Awaitable[str]]:
        async def work(unit: UnitOfWork) -> str:
            await unit.connection.execute(counters.insert().values(name=name, value=1))
            unit.emit_envelope(
                new_event(producer="t", saga_id=name, payload=events_pb2.PaymentCompleted(payment_id=name))
            )
            if name == "refused":
                raise FailedPrecondition("refused after writing and emitting: none of it may stay")
            if name == "broken":
                raise RuntimeError("a bug after writing and emitting")
            return name

        return work

    names = [f"n{index}" for index in range(30)] + ["refused"]
    answers = await asyncio.gather(*(group.run(insert(name)) for name in names), return_exceptions=True)
    assert answers[:30] == names[:30]
    assert isinstance(answers[30], FailedPrecondition)
    # One transaction for the first request, then the rest that queued meanwhile (SQLite);
    # one each on PostgreSQL, where transactions are not shared.
    assert len(commits) < 10 if database.single_writer else len(commits) == 30
    assert sum(commits) == 30  # every event in the outbox with its own row

    # A request that fails only fails itself, whatever the error.
    answers = await asyncio.gather(
        *(group.run(insert(name)) for name in ["m1", "broken", "m2"]), return_exceptions=True
    )
    assert answers[0] == "m1" and answers[2] == "m2" and isinstance(answers[1], RuntimeError)

    async with database.read() as connection:
        stored = set((await connection.scalars(sa.select(counters.c.name))).all())
        outbox = await connection.scalar(sa.select(sa.func.count()).select_from(database.outbox))
    assert stored == set(names[:30]) | {"m1", "m2"}
    assert outbox == 32
    await database.engine.dispose()
