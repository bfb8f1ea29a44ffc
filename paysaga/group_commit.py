"""Group commit for requests: concurrent writes share one transaction, one commit, one fsync.

On SQLite writers take turns, so under load each request's own transaction queues behind the
others, and each pays for its own BEGIN and its own fsync while holding the only write lock.
Here requests that arrive while a transaction is running wait for the next one, and that one
runs all of them (up to MAX_BATCH) back to back. Each request still gets its own answer:

- a DomainError is that request's refusal. The work must raise it before writing anything, so
  the others' writes commit and the refused request changed nothing;
- any other failure rolls the whole batch back, and each request then runs in a transaction of
  its own (``Database.retrying``), so a failure only ever reaches its own caller.

On PostgreSQL each request keeps its own transaction, as consumers do there: a shared one would
hold many requests' row locks, in no common order, until its one commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from paysaga.errors import DomainError
from paysaga.unit_of_work import Database, UnitOfWork

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 64


@dataclass(frozen=True)
class _Request(Generic[T]):
    work: Callable[[UnitOfWork], Awaitable[T]]
    answer: asyncio.Future[T]


class GroupCommit(Generic[T]):
    def __init__(self, database: Database, max_batch: int = MAX_BATCH) -> None:
        self._database = database
        self._max_batch = max_batch
        self._waiting: list[_Request[T]] = []
        self._committer: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
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
                if live:
                    await self._commit(live)
        finally:
            self._committer = None
            for request in self._waiting:  # only if this task itself was cancelled (shutdown)
                request.answer.cancel()
            self._waiting = []

    async def _commit(self, batch: list[_Request[T]]) -> None:
        results: list[tuple[_Request[T], T]] = []
        refusals: list[tuple[_Request[T], DomainError]] = []
        try:
            async with self._database.transaction() as unit:
                for request in batch:
                    try:
                        results.append((request, await request.work(unit)))
                    except DomainError as error:
                        refusals.append((request, error))
        except Exception as error:  # noqa: BLE001 - each request gets its own verdict below
            if len(batch) == 1:
                _fail(batch[0], error)
                return
            log.info("group_commit.split", extra={"requests": len(batch), "error": repr(error)})
            await asyncio.gather(*(self._alone(request) for request in batch))
            return
        for request, result in results:
            _resolve(request, result)
        for request, refused in refusals:
            _fail(request, refused)

    async def _alone(self, request: _Request[T]) -> None:
        try:
            result = await self._database.retrying(request.work)
        except Exception as error:  # noqa: BLE001 - handed to its caller
            _fail(request, error)
            return
        _resolve(request, result)


# A caller that stopped waiting (its answer cancelled) gets nothing.
def _resolve(request: _Request[T], result: T) -> None:
    if not request.answer.done():
        request.answer.set_result(result)


def _fail(request: _Request[T], error: Exception) -> None:
    if not request.answer.done():
        request.answer.set_exception(error)
