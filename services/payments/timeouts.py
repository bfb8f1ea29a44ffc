"""The saga deadline: a payment still in flight after its deadline is cancelled and fails.

This is what bounds a purchase when a step never answers (e.g. inventory is down): the ledger
releases the hold in reaction to the cancellation, and the payment ends FAILED with the reason.

A payment waiting for a compensation (CANCELLING, REFUNDING) ends when the ledger confirms it;
if that takes far longer than a saga may (the ledger down, or the compensation parked in a
dead-letter stream), it is reported as an alert, once a minute, until someone acts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from paysaga.runtime.service_process import Worker
from paysaga.runtime.storage.unit_of_work import Database
from paysaga.runtime.tasks import sleep_or_stop
from services.payments import handlers
from services.payments.adapters import views
from services.payments.adapters.repository import PaymentsUnit
from services.payments.domain import PaymentLimits

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.5
SWEEP_BATCH = 100
STUCK_AFTER_TIMEOUTS = 4
STUCK_ALERT_INTERVAL_S = 60.0


def deadline_sweeper(database: Database[PaymentsUnit], rules: PaymentLimits) -> Worker:
    async def sweep(stop: asyncio.Event) -> None:
        last_alert = -STUCK_ALERT_INTERVAL_S
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            overdue = await views.overdue(database, database.clock(), SWEEP_BATCH)
            for payment_id in overdue:
                async with database.transaction() as unit:
                    await handlers.time_out(unit, payment_id, rules)
            if loop.time() - last_alert >= STUCK_ALERT_INTERVAL_S:
                last_alert = loop.time()
                await _report_stuck(database, rules)
            if len(overdue) < SWEEP_BATCH:
                await sleep_or_stop(stop, SWEEP_INTERVAL_S)

    return sweep


async def _report_stuck(database: Database, rules: PaymentLimits) -> None:
    since = database.clock() - dt.timedelta(seconds=rules.saga_timeout_s * STUCK_AFTER_TIMEOUTS)
    for row in await views.stuck_compensations(database, since, SWEEP_BATCH):
        log.error(
            "payment.compensation_overdue",
            extra={"alert": True, "payment_id": row.payment_id, "status": row.status, "since": row.updated_at},
        )
