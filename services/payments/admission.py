"""Admission control: refuse new purchases while too many are still running.

Above capacity, accepting every purchase only builds a queue: each waits behind the others
until it passes its saga deadline and is undone, so almost none complete. Refusing early with
RESOURCE_EXHAUSTED keeps the purchases already accepted fast, and tells the client to come back
(with the same idempotency key) in a moment.

In flight means not yet past the saga's forward steps (PENDING, FUNDS_HELD, STOCK_RESERVED), so
the saga deadline bounds how long a purchase counts; compensations waiting on a parked event do
not hold the door shut. The count is read from the database at most every REFRESH_S, plus the
purchases admitted and not yet stored, and grows by each purchase admitted in between; several
replicas each add their own, so under a burst the limit is approximate by what they admit within
one refresh. The check comes before the idempotency key is looked up, so while the service is
full even a retry of a stored purchase is told to come back later.

The tiers are refused in turn: a purchase is taken on while fewer are in flight than its tier's
limit (PaymentLimits.admission_shares of max_in_flight: by default 70% for standard, 90% for
priority, all of it for critical). Under overload the standard tier is turned away first and the
room left above its limit is kept for priority and critical purchases.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping

from paysaga.core.errors import ResourceExhausted
from paysaga.runtime import metrics
from paysaga.runtime.storage.unit_of_work import Database
from services.payments.adapters import views

REFRESH_S = 0.1


class Admission:
    def __init__(self, database: Database, limits: Mapping[str, int]) -> None:
        self._database = database
        self._limits = dict(limits)  # tier -> purchases in flight below which one of it is taken on
        self._in_flight = 0  # as last counted, plus what was admitted since
        self._creating = 0  # admitted and not yet stored (or refused): the database cannot see them
        self._refresh_at = float("-inf")
        self._refreshing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def admitted(self, tier: str) -> AsyncIterator[None]:
        """Count one more purchase of tier in flight while the block stores it, or raise
        ResourceExhausted (nothing is changed)."""
        if time.monotonic() >= self._refresh_at:
            await self._refresh()
        limit = self._limits[tier]
        if self._in_flight >= limit:
            metrics.ADMISSION_REFUSALS.labels(tier).inc()
            raise ResourceExhausted(
                f"{self._in_flight} purchases are still in flight; {tier} purchases are taken on while fewer than "
                f"{limit} are; retry in a moment with the same idempotency key"
            )
        self._in_flight += 1
        self._creating += 1
        try:
            yield
        finally:
            self._creating -= 1

    async def _refresh(self) -> None:
        async with self._refreshing:
            if time.monotonic() < self._refresh_at:
                return  # refreshed while this call waited
            stored = await views.count_in_flight(self._database)
            # Those still being stored are not in the count yet (a few just stored may be counted
            # twice until the next refresh: erring towards refusing).
            self._in_flight = stored + self._creating
            self._refresh_at = time.monotonic() + REFRESH_S
