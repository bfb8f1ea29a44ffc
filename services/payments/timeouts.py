"""The saga deadline: a payment still in flight after its deadline is cancelled and fails.

This is what bounds a purchase when a step never answers (e.g. inventory is down): the ledger
releases the hold in reaction to the cancellation, and the payment ends FAILED with the reason.
"""

from __future__ import annotations

import asyncio
import logging

from paysaga.service_process import Worker
from paysaga.settings import PaymentLimits
from paysaga.tasks import sleep_or_stop
from paysaga.unit_of_work import Database, utc_now
from services.payments import handlers
from services.payments.adapters import repository

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.5
SWEEP_BATCH = 100


def deadline_sweeper(database: Database, rules: PaymentLimits) -> Worker:
    async def sweep(stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with database.read() as connection:
                overdue = await repository.overdue(connection, utc_now(), SWEEP_BATCH)
            for payment_id in overdue:
                async with database.transaction() as unit:
                    await handlers.time_out(unit, payment_id, rules.saga_timeout_s)
            if len(overdue) < SWEEP_BATCH:
                await sleep_or_stop(stop, SWEEP_INTERVAL_S)

    return sweep
