"""Admission control: refuse new purchases while too many are still running.

Above capacity, accepting every purchase only builds a queue: each waits behind the others
until it passes its saga deadline and is undone, so almost none complete. Refusing early with
RESOURCE_EXHAUSTED keeps the purchases already accepted fast, and tells the client to come back
(with the same idempotency key) in a moment.

In flight means not yet past the saga's forward steps (PENDING, FUNDS_HELD, STOCK_RESERVED), so
the saga deadline bounds how long a purchase counts; compensations waiting on a parked event do
not hold the door shut. The count is read from the database at most every REFRESH_S and grows
by each purchase admitted in between; several replicas each add their own, so under a burst the
limit is approximate by what they admit within one refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from paysaga.errors import ResourceExhausted
from paysaga.unit_of_work import Database
from services.payments.adapters import repository

REFRESH_S = 0.1


class Admission:
    def __init__(
        self,
        database: Database,
        max_in_flight: int,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._max_in_flight = max_in_flight
        self._refresh_s = refresh_s
        self._clock = clock
        self._in_flight = 0
        self._refresh_at = float("-inf")
        self._refreshing = asyncio.Lock()

    async def admit(self) -> None:
        """Count one more purchase in flight, or raise ResourceExhausted (nothing is changed)."""
        if self._clock() >= self._refresh_at:
            await self._refresh()
        if self._in_flight >= self._max_in_flight:
            raise ResourceExhausted(
                f"{self._in_flight} purchases are still in flight, at most {self._max_in_flight} are taken on; "
                "retry in a moment with the same idempotency key"
            )
        self._in_flight += 1

    async def _refresh(self) -> None:
        async with self._refreshing:
            if self._clock() < self._refresh_at:
                return  # refreshed while this call waited
            async with self._database.read() as connection:
                self._in_flight = await repository.count_in_flight(connection)
            self._refresh_at = self._clock() + self._refresh_s
