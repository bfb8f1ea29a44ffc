"""Handlers that trust the order of events, to show the simulator's lanes find what that breaks:
inventory releases a reservation on FundsReleased only if it has one, and leaves no tombstone.
When the release (compensation lane) overtakes FundsHeld (a tier's lane), the late FundsHeld
reserves stock for a payment that already ended, and the reservation is never released."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from paysaga.core.eventing import EventEnvelope
from paysaga.runtime.messaging.consumer import EventHandler
from services.inventory import handlers as inventory
from services.inventory.adapters.repository import InventoryUnit
from tests.simulation.world import CURRENT_CODE, ServiceCode


async def release_if_reserved(unit: InventoryUnit, event: EventEnvelope) -> None:
    if await unit.inventory.load_reservation(event.funds_released.payment_id) is not None:
        await inventory.on_funds_released(unit, event)


def _code() -> Mapping[str, ServiceCode]:
    code = CURRENT_CODE["inventory"]
    handlers: dict[str, EventHandler[Any]] = {**code.handlers, "FundsReleased": release_if_reserved}
    return {**CURRENT_CODE, "inventory": ServiceCode(code.metadata, code.unit, handlers, code.subscriptions)}


TRUSTING_CODE = _code()
