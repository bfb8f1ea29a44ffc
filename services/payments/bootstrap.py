"""Build the payments service from its settings, with its dependencies passed in."""

from __future__ import annotations

from paysaga.service_process import ServiceDefinition
from paysaga.settings import ServiceSettings
from services.payments.adapters import grpc_api


def bootstrap(settings: ServiceSettings) -> ServiceDefinition:
    return ServiceDefinition(name=settings.service, grpc_services=[grpc_api.grpc_service()])
