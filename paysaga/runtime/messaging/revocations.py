"""Token revocations from the authorization server, followed by every service.

The OAuth authorization server (services.auth) announces each revocation as a ``TokensRevoked``
event in its stream, written through its outbox like any event of ours. Every service reads that
stream from its first message to its last before it starts serving, then every second for what
is new, into the RevokedTokens its TokenVerifier consults on every call: a revoked token is
refused by every replica of every service within about a second, and a restarted process knows
every revocation before its first call. The stream keeps a revocation far longer than the
longest-lived token it can name.

Reading message by message (``STREAM.MSG.GET``) rather than through a consumer needs no consumer
state on the server, survives NATS restarts and reconnects without anything to recreate, and costs
one small request per second per process when nothing changes. A stream created anew (deleted by
hand, restored from a backup) is noticed by its creation time and read again from its start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
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


class RevocationFollower:
    """Keeps a RevokedTokens current with the revocations stream."""

    def __init__(self, jetstream: JetStreamContext, revoked: RevokedTokens) -> None:
        self.jetstream = jetstream
        self.revoked = revoked
        # The last sequence read, in the stream created at that time.
        self.after = 0
        self.stream_created: dt.datetime | None = None

    async def read_new(self) -> int:
        """Add the revocations not read yet; how many messages were read. NotFoundError if there
        is no such stream (no authorization server has ever run)."""
        info = await self.jetstream.stream_info(REVOCATIONS_STREAM)
        first, last = info.state.first_seq, info.state.last_seq
        if info.created != self.stream_created or last < self.after:
            if self.stream_created is not None:
                log.warning("revocations.stream_recreated", extra={"stream": REVOCATIONS_STREAM, "alert": True})
            self.stream_created, self.after = info.created, 0
        read = 0
        for sequence in range(max(self.after + 1, first), last + 1):
            try:
                message = await self.jetstream.get_msg(REVOCATIONS_STREAM, seq=sequence)
            except NotFoundError:
                continue  # removed (expired) since the stream info
            read += 1
            self._apply(sequence, message.data or b"")
        self.after = max(self.after, last)
        return read

    def _apply(self, sequence: int, data: bytes) -> None:
        try:
            envelope = eventing.parse(data)
        except ValueError as error:
            log.error("revocations.unreadable", extra={"sequence": sequence, "error": str(error), "alert": True})
            return
        if envelope.WhichOneof("payload") != "tokens_revoked":
            return
        event = envelope.tokens_revoked
        expires_at = event.expires_at.seconds if event.HasField("expires_at") else 0
        self.revoked.add(event.token_ids, float(expires_at))
        log.info(
            "revocations.applied",
            extra={"client": event.client, "tokens": len(event.token_ids), "reason": event.reason},
        )

    async def catch_up(self) -> None:
        """Read every revocation there is (before the service serves its first call)."""
        try:
            read = await self.read_new()
        except NotFoundError:
            return
        log.info("revocations.caught_up", extra={"messages": read, "revoked_tokens": len(self.revoked)})

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until stop is set; before any authorization server has run there is
        no stream, and so nothing revoked: it is looked for again every second."""
        while not stop.is_set():
            try:
                await self.read_new()
            except NotFoundError:
                pass
            except (nats.errors.Error, TimeoutError) as error:
                log.warning("revocations.unreachable", extra={"error": repr(error)})
            await sleep_or_stop(stop, POLL_INTERVAL_S)
