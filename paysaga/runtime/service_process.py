"""The life of one service process: start, serve, drain.

Start-up order matters: the database (migrated to the latest schema) and the NATS streams must
be usable before the gRPC server reports SERVING, so a load balancer or ``depends_on:
service_healthy`` never sends work to a half-started process. Then the outbox relay, the event
consumers and the service's own workers run in the background. On SIGTERM or Ctrl-C the process
reports NOT_SERVING, stops accepting calls, lets in-flight calls finish within the drain timeout,
stops the background loops (the relay publishes what is committed), drains NATS, and exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from nats.js import JetStreamContext

from paysaga.runtime import metrics
from paysaga.runtime.grpc_server import GrpcService, create_server
from paysaga.runtime.logs import configure_logging
from paysaga.runtime.messaging import lanes, streams
from paysaga.runtime.messaging.consumer import EventConsumer, EventHandler, Subscription
from paysaga.runtime.messaging.relay import OutboxRelay
from paysaga.runtime.messaging.revocations import RevocationFollower
from paysaga.runtime.security import tls, tokens
from paysaga.runtime.security.ratelimit import RateLimiter
from paysaga.runtime.security.revocation import CRL_FILE, RevocationList
from paysaga.runtime.settings import Option, ServiceSettings, load_settings
from paysaga.runtime.storage import database, migrations, retention
from paysaga.runtime.storage.unit_of_work import Database, UnitFactory, UnitOfWork
from paysaga.runtime.tasks import sleep_or_stop

T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)

log = logging.getLogger(__name__)


Worker = Callable[[asyncio.Event], Awaitable[None]]
WORKER_RESTART_DELAY_S = 1.0
NATS_CERTIFICATE_CHECK_INTERVAL_S = 2.0
# Lanes handling events at once on PostgreSQL (each event in a transaction of its own).
POSTGRES_TURNS = 4


@dataclass(frozen=True)
class ServiceDefinition(Generic[U]):
    """What a service contributes to the shared lifecycle; built by the service's bootstrap().
    Generic in the service's unit of work: its handlers, servicers and workers take that unit (a
    mismatch is a type error)."""

    name: str
    metadata: sa.MetaData
    migrations: Path
    # The service's unit of work (its repositories on the transaction's connection).
    unit: UnitFactory[U]
    grpc_services: Callable[[Database[U]], Sequence[GrpcService]]
    subscriptions: Sequence[Subscription] = ()
    handlers: Mapping[str, EventHandler[U]] = field(default_factory=dict)
    # Background loops of the service's own (e.g. a timeout sweeper); each runs until its event is set.
    workers: Callable[[Database[U], JetStreamContext], Sequence[Worker]] = lambda _database, _jetstream: ()


async def serve(definition: ServiceDefinition[Any], settings: ServiceSettings, stop: asyncio.Event) -> None:
    """Run until stop is set, then drain. Raises if start-up fails."""
    credentials = tls.server_credentials(settings.tls)
    revoked = tokens.RevokedTokens()
    verifier = tokens.TokenVerifier(
        settings.token_keys_file,
        audience=tokens.audience_of(settings.service),
        issuer=settings.token_issuers,
        revoked=revoked,
    )
    engine = database.create_engine(settings.database_url)
    nats_client = None
    try:
        await migrations.upgrade(engine, definition.migrations)
        store = Database(engine, definition.metadata, definition.unit, producer=settings.service)
        certificate = tls.CertificateWatcher(settings.tls, check_interval_s=NATS_CERTIFICATE_CHECK_INTERVAL_S)
        nats_client = await streams.connect(
            settings.nats_url, settings.tls, name=settings.service, timeout_s=settings.startup_timeout_s
        )
        jetstream = nats_client.jetstream()
        # JetStream may be slow to answer at first (a cluster electing leaders, or placing the
        # streams and consumers of every service starting at once): each step is retried until then.
        ready_by = asyncio.get_running_loop().time() + settings.startup_timeout_s
        owned = streams.owned_streams(settings.service)
        await streams.ensure_streams(jetstream, owned, settings.stream_replicas, deadline=ready_by)
        # Every token revoked so far is known before the first call is served.
        revocations = RevocationFollower(jetstream, revoked)
        await streams.until_ready(revocations.catch_up, what="token revocations", deadline=ready_by)
        relay = OutboxRelay(
            store, jetstream, owned, settings.stream_replicas, atomic_batch_min=settings.atomic_batch_min
        )
        consumers = _lane_consumers(definition, settings, jetstream, store)
        # Before the first fetch: the lanes take over from the consumers of a version before them.
        lanes_of = [(consumer.producer, consumer.stream, consumer.config) for consumer in consumers]
        await streams.until_ready(
            functools.partial(lanes.adopt_single_consumers, jetstream, settings.service, lanes_of),
            what="lane consumers",
            deadline=ready_by,
        )
        built = create_server(
            settings.grpc_bind,
            credentials,
            definition.grpc_services(store),
            verifier,
            RateLimiter(settings.rate_limits),
            RevocationList(settings.tls.ca_file.parent / CRL_FILE, settings.tls.ca_file),
        )
        workers_stop = asyncio.Event()
        client = nats_client
        loops: list[tuple[str, Worker]] = [
            ("outbox-relay", relay.run),
            ("nats-certificate", lambda stop: streams.follow_certificate(client, certificate, stop)),
            ("token-revocations", revocations.run),
            ("retention", lambda stop: retention.run(store, settings.retention, stop)),
        ]
        loops += [(f"consumer-{consumer.name}", consumer.run) for consumer in consumers]
        followed = [(consumer.stream, consumer.name, consumer.lane) for consumer in consumers]
        loops.append(("metrics-consumers", lambda stop: metrics.follow_consumers(jetstream, followed, stop)))
        if settings.metrics_bind:
            loops.append(("metrics", lambda stop: metrics.serve_metrics(settings.metrics_bind, settings.tls, stop)))
        loops += [(f"worker-{index}", worker) for index, worker in enumerate(definition.workers(store, jetstream))]
        tasks = [asyncio.create_task(_supervised(name, loop, workers_stop), name=name) for name, loop in loops]
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
        workers_stop.set()
        _, unfinished = await asyncio.wait(tasks, timeout=settings.drain_timeout_s)
        for task in unfinished:
            task.cancel()
    finally:
        if nats_client is not None and nats_client.is_connected:
            await nats_client.drain()
        elif nats_client is not None:
            await nats_client.close()  # reconnecting: nothing can be flushed, stop trying
        await engine.dispose()
    log.info("service.stopped")


def _lane_consumers(
    definition: ServiceDefinition[U], settings: ServiceSettings, jetstream: JetStreamContext, store: Database[U]
) -> list[EventConsumer[U]]:
    """A consumer per subscription (a producer's lane), taking turns at the database by lane."""
    # One writer at a time on SQLite: a turn is the writer. On PostgreSQL transactions run side by
    # side, and the turns only decide who goes first when there are more lanes busy than slots.
    scheduler = lanes.LaneScheduler(settings.lanes.weights, 1 if store.single_writer else POSTGRES_TURNS)
    return [
        EventConsumer(
            settings.service,
            jetstream,
            store,
            subscription,
            definition.handlers,
            scheduler=scheduler,
            max_ack_pending=settings.lanes.max_ack_pending.get(subscription.lane),
            workers=settings.lanes.workers.get(subscription.lane, 1),
        )
        for subscription in definition.subscriptions
    ]


async def _supervised(name: str, loop: Worker, stop: asyncio.Event) -> None:
    """Run a background loop until stop; if it crashes, log it and start it again."""
    while not stop.is_set():
        try:
            await loop(stop)
        except Exception:
            log.exception("worker.crashed", extra={"worker": name, "alert": True})
            await sleep_or_stop(stop, WORKER_RESTART_DELAY_S)


def run_on_fast_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run coroutine to completion in a fresh event loop from event_loop_factory()."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(coroutine)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (every platform but Windows): the same asyncio API with a
    loop that costs a fraction of the CPU per wake-up, which a service doing thousands of small
    awaits per second feels directly. None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(definition: ServiceDefinition[Any], settings: ServiceSettings) -> int:
    """Run the service in a fresh event loop with SIGTERM / SIGINT wired to a graceful drain."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(definition, settings, stop)

    try:
        run_on_fast_loop(main())
    except (tls.TlsConfigurationError, tokens.TokenError, ConnectionError, OSError) as error:
        log.error("service.start_failed", extra={"error": str(error)})
        return 1
    return 0


def main(
    service: str,
    bootstrap: Callable[[ServiceSettings], ServiceDefinition[Any]],
    argv: Sequence[str] | None = None,
    options: Sequence[Option] = (),
) -> int:
    """The entry point shared by ``python -m services.<name>``: settings (the common ones and the
    service's own options), logging, then run."""
    settings = load_settings(service, sys.argv[1:] if argv is None else argv, options=options)
    configure_logging(service, settings.log_level)
    return run(bootstrap(settings), settings)
