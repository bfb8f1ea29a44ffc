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
import logging
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from paysaga.settings import TlsFiles
from paysaga.tls import client_ssl_context

log = logging.getLogger(__name__)

EVENTS_SUBJECT_ROOT = "paysaga.events"
DEAD_LETTER_SUBJECT_ROOT = "paysaga.deadletter"
# Long enough for the nightly reconciliation's 48 h look-back, with room for a missed night.
STREAM_MAX_AGE_S = 7 * 24 * 3600
# Re-publishing an event (e.g. the outbox relay after a crash) within this window is dropped by
# its Nats-Msg-Id; the relay retries far sooner than this.
DUPLICATE_WINDOW_S = 120
CONNECT_ATTEMPT_TIMEOUT_S = 5
RECONNECT_WAIT_S = 1
# Long enough to flush what was published; a drain must never hold up a shutdown for long.
DRAIN_TIMEOUT_S = 5


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
    context = client_ssl_context(tls_files)
    urls = [url.strip() for url in servers.split(",") if url.strip()]
    client = NatsClient()
    try:
        # With unlimited reconnects nats-py also retries the first connect forever; bound it here.
        await asyncio.wait_for(
            client.connect(
                urls,
                name=name,
                tls=context,
                connect_timeout=CONNECT_ATTEMPT_TIMEOUT_S,
                reconnect_time_wait=RECONNECT_WAIT_S,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                drain_timeout=DRAIN_TIMEOUT_S,
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
