"""The life of one service process: start, serve, drain.

Start-up order matters: the database and the NATS streams must be usable before the gRPC
server reports SERVING, so a load balancer or ``depends_on: service_healthy`` never sends work to
a half-started process. On SIGTERM or Ctrl-C the process reports NOT_SERVING, stops accepting
calls, lets in-flight calls finish within the drain timeout, drains NATS, and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from paysaga import database, messaging, tls
from paysaga.grpc_server import GrpcService, create_server
from paysaga.logs import configure_logging
from paysaga.settings import ServiceSettings, load_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceDefinition:
    """What a service contributes to the shared lifecycle; built by the service's bootstrap()."""

    name: str
    grpc_services: Sequence[GrpcService]


async def serve(definition: ServiceDefinition, settings: ServiceSettings, stop: asyncio.Event) -> None:
    """Run until stop is set, then drain. Raises if start-up fails."""
    credentials = tls.server_credentials(settings.tls)
    engine = database.create_engine(settings.database_url)
    nats_client = None
    try:
        await database.check_database(engine)
        nats_client = await messaging.connect(
            settings.nats_url, settings.tls, name=settings.service, timeout_s=settings.startup_timeout_s
        )
        jetstream = nats_client.jetstream()
        for stream in messaging.owned_streams(settings.service):
            await messaging.ensure_stream(jetstream, stream, settings.stream_replicas)
        built = create_server(settings.grpc_bind, credentials, definition.grpc_services)
        await built.set_serving(False)
        await built.server.start()
        await built.set_serving(True)
        log.info(
            "service.ready", extra={"grpc_bind": settings.grpc_bind, "grpc_port": built.port, "nats": settings.nats_url}
        )
        await stop.wait()
        log.info("service.draining", extra={"drain_timeout_s": settings.drain_timeout_s})
        await built.set_serving(False)
        await built.server.stop(grace=settings.drain_timeout_s)
    finally:
        if nats_client is not None and nats_client.is_connected:
            await nats_client.drain()
        await engine.dispose()
    log.info("service.stopped")


def run(definition: ServiceDefinition, settings: ServiceSettings) -> int:
    """Run the service in a fresh event loop with SIGTERM / SIGINT wired to a graceful drain."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(definition, settings, stop)

    try:
        asyncio.run(main())
    except (tls.TlsConfigurationError, ConnectionError, OSError) as error:
        log.error("service.start_failed", extra={"error": str(error)})
        return 1
    return 0


def main(
    service: str, bootstrap: Callable[[ServiceSettings], ServiceDefinition], argv: Sequence[str] | None = None
) -> int:
    """The entry point shared by ``python -m services.<name>``: settings, logging, then run."""
    settings = load_settings(service, sys.argv[1:] if argv is None else argv)
    configure_logging(service, settings.log_level)
    return run(bootstrap(settings), settings)
