"""Build the authorization server from its settings, with its dependencies passed in.

It is a service like the others (its own database, outbox and stream, a gRPC port with only the
health and reflection services, certificates from our CA), plus the HTTPS listener of the OAuth
endpoints, which runs as one of its workers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from paysaga.runtime.https import serve_https
from paysaga.runtime.messaging.consumer import Subscription
from paysaga.runtime.security.revocation import CRL_FILE, RevocationList
from paysaga.runtime.service_process import ServiceDefinition, Worker
from paysaga.runtime.settings import ServiceSettings
from paysaga.runtime.storage.unit_of_work import Database
from services.auth.adapters import http_api, tables
from services.auth.adapters.oauth import AuthorizationServer
from services.auth.adapters.repository import AuthUnit

# It reacts to no one's events; it only announces revocations.
SUBSCRIPTIONS: tuple[Subscription, ...] = ()
MIGRATIONS = Path(__file__).parent / "migrations"


def https_worker(settings: ServiceSettings, database: Database[AuthUnit]) -> Worker:
    options = settings.options
    keys = http_api.SigningKeys(Path(options["signing_key"]), settings.token_keys_file)
    endpoints = http_api.AuthorizationEndpoints(
        database,
        AuthorizationServer(options["issuer"], lambda: keys.signing),
        keys,
        RevocationList(settings.tls.ca_file.parent / CRL_FILE, settings.tls.ca_file),
        options["issuer"],
    )
    host, _, port = options["https_bind"].rpartition(":")

    async def serve(stop: asyncio.Event) -> None:
        await serve_https(endpoints.application(), host, int(port), settings.tls, stop, name="oauth")

    return serve


def bootstrap(settings: ServiceSettings) -> ServiceDefinition[AuthUnit]:
    return ServiceDefinition(
        name=settings.service,
        metadata=tables.metadata,
        migrations=MIGRATIONS,
        unit=AuthUnit,
        grpc_services=lambda database: [],
        workers=lambda database, _jetstream: [https_worker(settings, database)],
    )
