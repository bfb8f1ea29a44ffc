"""Group commit: many writes share one transaction, one commit, one fsync, each in a savepoint.

The one mechanism for both kinds of write: requests (GroupCommit, below) and the events of one
consumer fetch (paysaga.runtime.messaging.consumer) run through each_in_savepoint().

On SQLite writers take turns, so under load each request's own transaction queues behind the
others, and each pays for its own BEGIN and its own fsync while holding the only write lock.
Here requests that arrive while a transaction is running wait for the next one, and that one
runs all of them (up to MAX_BATCH) back to back, each inside a savepoint of its own. Each
request still gets its own answer:

- if its work raises, its savepoint is rolled back (its rows and its events are gone) and that
  error is its answer; the others go on and commit;
- if the database itself fails (unavailable, or the commit fails), every request of the batch
  gets that error: nothing of the batch was kept.

A request whose caller gave up before its turn is not run. A lone request runs in a plain
transaction, with no savepoint to pay for. A batch first runs without savepoints too (a
SAVEPOINT and its RELEASE cost about as much as a small request): only when one of its works
raises is that transaction rolled back and the batch run again, each work in its savepoint. A
work may be run again anyway (a transaction that conflicted is retried), so it must be safe to.

On PostgreSQL each request keeps its own transaction, as consumers do there: a shared one would
hold many requests' row locks, in no common order, until its one commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from paysaga.runtime.storage.database import is_unavailable
from paysaga.runtime.storage.unit_of_work import Database, UnitOfWork

T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)
MAX_BATCH = 64


@dataclass(frozen=True)
class _Request(Generic[U, T]):
    work: Callable[[U], Awaitable[T]]
    answer: asyncio.Future[T]


class GroupCommit(Generic[U, T]):
    """Requests' writes, each answered with its own result once it has committed."""

    def __init__(self, database: Database[U], max_batch: int = MAX_BATCH) -> None:
        self._database = database
        self._max_batch = max_batch
        self._waiting: list[_Request[U, T]] = []
        self._committer: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[U], Awaitable[T]]) -> T:
        """work's result, once the transaction it ran in has committed."""
        if not self._database.single_writer:
            return await self._database.retrying(work)
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(work, answer))
        if self._committer is None:
            # A task of its own: a caller that gives up must not stop the others' commit.
            self._committer = asyncio.create_task(self._commit_all(), name="group-commit")
        return await answer

    async def _commit_all(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
                live = [request for request in batch if not request.answer.cancelled()]
                try:
                    await self._commit(live)
                except BaseException:
                    for request in live:  # cancelled (shut down) mid-batch: nobody waits for ever
                        request.answer.cancel()
                    raise
        finally:
            self._committer = None
            for request in self._waiting:  # only if this task itself was cancelled (shutdown)
                request.answer.cancel()
            self._waiting = []

    async def _commit(self, batch: list[_Request[U, T]]) -> None:
        if not batch:
            return
        if len(batch) == 1:
            await self._alone(batch[0])
            return
        works = [request.work for request in batch]
        try:
            outcomes = await savepoints_if_needed(
                self._database, lambda unit, savepoints: each_in_savepoint(unit, works, savepoints=savepoints)
            )
        except Exception as error:  # noqa: BLE001 - the database failed the whole batch
            for request in batch:
                _fail(request, error)
            return
        for request, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                _fail(request, outcome)
            else:
                _resolve(request, outcome)

    async def _alone(self, request: _Request[U, T]) -> None:
        try:
            result = await self._database.retrying(request.work)
        except Exception as error:  # noqa: BLE001 - handed to its caller
            _fail(request, error)
            return
        _resolve(request, result)


class OneFailed(Exception):
    """A work raised in a batch run without savepoints: its transaction must be rolled back and
    the batch run again with them (each_in_savepoint)."""


R = TypeVar("R")


async def savepoints_if_needed(database: Database[U], batch: Callable[[U, bool], Awaitable[R]]) -> R:
    """batch(unit, savepoints) in a transaction of database: first without savepoints, and only
    if one of its works raised (OneFailed) again, in a new transaction, with them."""
    try:
        async with database.transaction() as unit:
            return await batch(unit, False)
    except OneFailed:
        async with database.transaction() as unit:
            return await batch(unit, True)


async def each_in_savepoint(
    unit: U, works: Sequence[Callable[[U], Awaitable[T]]], *, savepoints: bool = True
) -> list[T | Exception]:
    """Run each work in a savepoint of unit's transaction, in order: its result, or its error with
    everything it wrote and emitted undone while the others' stays. An error of the database
    itself (unavailable, connection lost) is raised: the transaction is lost for all of them.
    Without savepoints, a work's error raises OneFailed instead (nothing can be undone alone)."""
    if not savepoints:
        results: list[T | Exception] = []
        for work in works:
            try:
                results.append(await work(unit))
            except Exception as error:
                if is_unavailable(error):
                    raise
                raise OneFailed(repr(error)) from error
        return results
    outcomes: list[T | Exception] = []
    for work in works:
        emitted = len(unit.emitted)
        outcome: T | Exception
        try:
            async with unit.connection.begin_nested():
                outcome = await work(unit)
        except Exception as error:
            if is_unavailable(error):
                raise
            del unit.emitted[emitted:]
            outcome = error
        outcomes.append(outcome)  # one per work, even if releasing its savepoint failed
    return outcomes


# A caller that stopped waiting (its answer cancelled) gets nothing.
def _resolve(request: _Request[U, T], result: T) -> None:
    if not request.answer.done():
        request.answer.set_result(result)


def _fail(request: _Request[U, T], error: Exception) -> None:
    if not request.answer.done():
        request.answer.set_exception(error)
