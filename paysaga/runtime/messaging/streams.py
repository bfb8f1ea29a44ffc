"""The NATS JetStream connection and the streams each service owns.

Subjects: every event a service emits is published under ``paysaga.events.<service>.<EventType>``
into that service's own stream ``<SERVICE>_EVENTS``; messages that can never be handled go to
``paysaga.deadletter.<service>.<reason>`` in ``<SERVICE>_DEAD_LETTERS``. A service creates (or
updates) exactly the streams it owns, idempotently, at every start.

Streams are file-backed and the server is configured to fsync before acknowledging
(``sync_interval: always``), so an acknowledged publish survives a crash of the server.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError

from paysaga.core.eventing import DEAD_LETTER_SUBJECT_ROOT, EVENTS_SUBJECT_ROOT
from paysaga.core.identity import service_identity
from paysaga.runtime.messaging.windows import DUPLICATE_WINDOW_S, STREAM_MAX_AGE_S
from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles
from paysaga.runtime.tasks import sleep_or_stop

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_ATTEMPT_TIMEOUT_S = 5
RECONNECT_WAIT_S = 1
# Long enough to flush what was published; a drain must never hold up a shutdown for long.
DRAIN_TIMEOUT_S = 5
# A server cut off without closing the connection (a network partition) is given up on after
# about PING_INTERVAL_S x (MAX_OUTSTANDING_PINGS + 1), and another node of a cluster is tried
# (nats-py's defaults would wait some six minutes).
PING_INTERVAL_S = 5
MAX_OUTSTANDING_PINGS = 2
# Between attempts to create a stream that JetStream could not take yet (a cluster electing its
# leader, or busy placing the replicas of many new streams at once).
STREAM_RETRY_S = 0.5


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    # 0 keeps messages until removed by hand: dead letters wait for a person.
    max_age_s: float = STREAM_MAX_AGE_S

    def config(self, replicas: int) -> StreamConfig:
        return StreamConfig(
            name=self.name,
            description=self.description,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age_s,
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
            # The relay publishes a large batch of events as one atomic batch (paysaga.runtime.messaging.batches).
            allow_atomic=True,
        )


def owned_streams(service: str) -> tuple[StreamSpec, ...]:
    """The streams a service publishes into, and so creates."""
    prefix = service.upper()
    return (
        StreamSpec(f"{prefix}_EVENTS", (f"{EVENTS_SUBJECT_ROOT}.{service}.>",), f"events emitted by {service}"),
        StreamSpec(
            f"{prefix}_DEAD_LETTERS",
            (f"{DEAD_LETTER_SUBJECT_ROOT}.{service}.>",),
            f"messages {service} could not handle, with the reason",
            max_age_s=0,
        ),
    )


async def connect(servers: str, tls_files: TlsFiles, *, name: str, timeout_s: float) -> NatsClient:
    """Connect over mTLS, retrying until timeout_s; once connected, reconnect forever."""
    options = tls_options(tls_files)
    urls = [url.strip() for url in servers.split(",") if url.strip()]
    client = NatsClient()
    try:
        # With unlimited reconnects nats-py also retries the first connect forever; bound it here.
        await asyncio.wait_for(
            client.connect(
                urls,
                name=name,
                **options,
                connect_timeout=CONNECT_ATTEMPT_TIMEOUT_S,
                reconnect_time_wait=RECONNECT_WAIT_S,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                drain_timeout=DRAIN_TIMEOUT_S,
                ping_interval=PING_INTERVAL_S,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                **_logging_callbacks(client),
            ),
            timeout=timeout_s,
        )
    except TimeoutError:
        last_error = client.last_error
        await client.close()
        raise ConnectionError(
            f"could not connect to NATS at {servers} within {timeout_s:g} s (last error: {last_error!r})"
        ) from None
    return client


def inbox_prefix(identity: str) -> str:
    """Where replies to this connection's requests arrive. Each identity has its own inbox subtree,
    and the NATS server lets it subscribe there only, so nobody reads another's replies (which
    carry the messages a JetStream consumer fetches)."""
    path = identity.removeprefix(service_identity(""))
    if not path or path == identity:
        raise ValueError(f"not a paysaga identity: {identity!r}")
    return "_INBOX." + path.replace("/", ".")


def tls_options(files: TlsFiles) -> dict[str, Any]:
    """nats-py connect options for a certificate: the mTLS context (TLS first: our NATS sends
    nothing in plaintext) and its identity's inbox."""
    material = tls.read_tls_files(files)
    try:
        prefix = inbox_prefix(material.identity)
    except ValueError:
        raise tls.TlsConfigurationError(
            f"{files.cert_file} carries no paysaga identity (a URI SAN spiffe://paysaga/...)"
        ) from None
    return {"tls": tls.checked_client_ssl_context(files), "tls_handshake_first": True, "inbox_prefix": prefix}


async def follow_certificate(client: NatsClient, watcher: tls.CertificateWatcher, stop: asyncio.Event) -> None:
    """Use a re-issued certificate (or CA bundle) for every later (re)connection to NATS.

    The open connection keeps its session; nats-py builds each new connection from the context in
    its options, so swapping in a fresh context is enough, and it also drops a retired CA. Create
    the watcher before connecting, so a rotation during the connect is not missed.
    """
    while not stop.is_set():
        await sleep_or_stop(stop, watcher.check_interval_s)
        material = watcher.poll()
        if material is None:
            continue
        try:
            client.options["tls"] = tls.checked_client_ssl_context(watcher.files)
        except (OSError, ssl.SSLError) as error:
            log.warning("tls.reload_failed", extra={"error": str(error)})
            continue
        log.info("tls.client_reloaded", extra=material.describe())


def _logging_callbacks(client: NatsClient) -> dict[str, Any]:
    async def on_error(error: Exception) -> None:
        event = "nats.error" if client.is_connected or client.is_reconnecting else "nats.connect_retry"
        log.warning(event, extra={"error": repr(error)})

    async def on_disconnected() -> None:
        if not (client.is_closed or client.is_draining):
            log.warning("nats.disconnected")

    async def on_reconnected() -> None:
        log.info("nats.reconnected", extra={"server": client.connected_url.netloc if client.connected_url else ""})

    return {"error_cb": on_error, "disconnected_cb": on_disconnected, "reconnected_cb": on_reconnected}


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int) -> str:
    """Create the stream, or bring its configuration up to date; returns what was done."""
    config = spec.config(replicas)
    try:
        current = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream.created", extra={"stream": spec.name, "subjects": list(spec.subjects)})
        return "created"
    wanted = config.as_dict()
    existing = current.config.as_dict()
    if all(existing.get(key) == value for key, value in wanted.items()):
        return "unchanged"
    await js.update_stream(config)
    log.info("stream.updated", extra={"stream": spec.name})
    return "updated"


async def ensure_streams(js: JetStreamContext, specs: Sequence[StreamSpec], replicas: int, *, deadline: float) -> None:
    """ensure_stream for each, retried while JetStream is not ready for it, until deadline (the
    loop's clock). Retrying is safe: a create that timed out but went through is found the next
    time and left as it is."""
    for spec in specs:
        await until_ready(functools.partial(ensure_stream, js, spec, replicas), what=spec.name, deadline=deadline)


async def until_ready(step: Callable[[], Awaitable[T]], *, what: str, deadline: float) -> T:
    """step(), again while JetStream does not answer in time or says it is unavailable (a cluster
    electing leaders, or busy placing many new streams and consumers), until deadline (the loop's
    clock). For start-up steps that are safe to repeat."""
    while True:
        try:
            return await step()
        except (nats.errors.TimeoutError, ServiceUnavailableError) as error:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            log.warning("jetstream.retry", extra={"step": what, "error": repr(error)})
            await asyncio.sleep(STREAM_RETRY_S)
