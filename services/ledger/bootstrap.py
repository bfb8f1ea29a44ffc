"""Build the ledger service from its settings, with its dependencies passed in."""

from __future__ import annotations

from pathlib import Path

from paysaga.runtime.messaging.consumer import subscriptions_for
from paysaga.runtime.service_process import ServiceDefinition
from paysaga.runtime.settings import ServiceSettings
from services.ledger import handlers
from services.ledger.adapters import grpc_api, tables
from services.ledger.adapters.repository import LedgerUnit

# The producers and event types this service consumes: whatever its handlers handle.
SUBSCRIPTIONS = subscriptions_for(handlers.EVENT_HANDLERS)


def bootstrap(settings: ServiceSettings) -> ServiceDefinition[LedgerUnit]:
    return ServiceDefinition(
        name=settings.service,
        metadata=tables.metadata,
        migrations=Path(__file__).parent / "migrations",
        unit=LedgerUnit,
        grpc_services=lambda database: [grpc_api.grpc_service(database)],
        subscriptions=SUBSCRIPTIONS,
        handlers=handlers.EVENT_HANDLERS,
    )
