"""Build the payments service from its settings, with its dependencies passed in."""

from __future__ import annotations

from pathlib import Path

from paysaga.runtime.messaging.consumer import subscriptions_for
from paysaga.runtime.service_process import ServiceDefinition
from paysaga.runtime.settings import ServiceSettings
from services.payments import config, handlers, timeouts
from services.payments.adapters import grpc_api, tables
from services.payments.adapters.repository import PaymentsUnit

# The producers and event types this service consumes: whatever its handlers handle.
SUBSCRIPTIONS = subscriptions_for(handlers.EVENT_HANDLERS)


def bootstrap(settings: ServiceSettings) -> ServiceDefinition[PaymentsUnit]:
    rules = config.payment_limits(settings)
    return ServiceDefinition(
        name=settings.service,
        metadata=tables.metadata,
        migrations=Path(__file__).parent / "migrations",
        unit=PaymentsUnit,
        grpc_services=lambda database: [grpc_api.grpc_service(database, rules)],
        subscriptions=SUBSCRIPTIONS,
        handlers=handlers.EVENT_HANDLERS,
        workers=lambda database: [timeouts.deadline_sweeper(database, rules)],
    )
