"""Token revocations from the authorization server, followed by every service.

The OAuth authorization server (services.auth) announces each revocation as a ``TokensRevoked``
event in its stream, written through its outbox like any event of ours. Every service reads that
stream from its first message to its last, and again every second for what is new, into the
RevokedTokens its TokenVerifier consults on every call: a revoked token is refused by every
replica of every service within about a second, and a restarted process reads the whole list
again before it has served long. The stream keeps a revocation only as long as the longest-lived
token it can name.

Reading message by message (``STREAM.MSG.GET``) rather than through a consumer needs no consumer
state on the server, survives NATS restarts and reconnects without anything to recreate, and costs
one small request per second per process when nothing changes.
"""

from __future__ import annotations

import asyncio
import logging

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from paysaga.core import eventing
from paysaga.runtime.messaging.streams import owned_streams
from paysaga.runtime.security.tokens import RevokedTokens
from paysaga.runtime.tasks import sleep_or_stop

log = logging.getLogger(__name__)

# The service whose stream carries the revocations.
AUTHORIZATION_SERVER = "auth"
REVOCATIONS_STREAM = owned_streams(AUTHORIZATION_SERVER)[0].name
POLL_INTERVAL_S = 1.0


async def read_new_revocations(jetstream: JetStreamContext, revoked: RevokedTokens, after: int) -> int:
    """Add the revocations in the stream after sequence number after; the last sequence read."""
    info = await jetstream.stream_info(REVOCATIONS_STREAM)
    first, last = info.state.first_seq, info.state.last_seq
    for sequence in range(max(after + 1, first), last + 1):
        try:
            message = await jetstream.get_msg(REVOCATIONS_STREAM, seq=sequence)
        except NotFoundError:
            continue  # removed (expired) since the stream info
        try:
            envelope = eventing.parse(message.data or b"")
        except ValueError as error:
            log.error("revocations.unreadable", extra={"sequence": sequence, "error": str(error), "alert": True})
            continue
        if envelope.WhichOneof("payload") != "tokens_revoked":
            continue
        event = envelope.tokens_revoked
        expires_at = event.expires_at.seconds if event.HasField("expires_at") else 0
        revoked.add(event.token_ids, float(expires_at))
        log.info(
            "revocations.applied",
            extra={"client": event.client, "tokens": len(event.token_ids), "reason": event.reason},
        )
    return max(after, last)


async def follow_revocations(jetstream: JetStreamContext, revoked: RevokedTokens, stop: asyncio.Event) -> None:
    """Keep revoked current until stop is set. Before the authorization server has ever run there
    is no stream, and so nothing revoked; it is looked for again every second."""
    after = 0
    while not stop.is_set():
        try:
            after = await read_new_revocations(jetstream, revoked, after)
        except NotFoundError:
            pass  # no authorization server yet
        except (nats.errors.Error, TimeoutError) as error:
            log.warning("revocations.unreachable", extra={"error": repr(error)})
        await sleep_or_stop(stop, POLL_INTERVAL_S)
