"""Services learn token revocations from the authorization server's stream, through a real
nats-server with our users and permissions: every revocation, once caught up, then what is new,
and again from the start when the stream was created anew (a restore, an operator's mistake)."""

from __future__ import annotations

import datetime as dt
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext

from paysaga.core.eventing import new_event, subject_of
from paysaga.events.v1 import events_pb2
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.revocations import AUTHORIZATION_SERVER, REVOCATIONS_STREAM, RevocationFollower
from paysaga.runtime.security.tokens import RevokedTokens
from tests.helpers import connect_as


async def announce(jetstream: JetStreamContext, *token_ids: str) -> None:
    expires_at = Timestamp()
    expires_at.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=15))
    envelope = new_event(
        producer=AUTHORIZATION_SERVER,
        saga_id="shop",
        causation_id="",
        payload=events_pb2.TokensRevoked(token_ids=token_ids, expires_at=expires_at, client="c", reason="test"),
        now=dt.datetime.now(dt.UTC),
    )
    await jetstream.publish(subject_of(envelope), envelope.SerializeToString())


async def test_a_service_follows_revocations_and_starts_over_on_a_new_stream(nats_cluster: LocalCluster) -> None:
    auth = await connect_as(nats_cluster.nats_url, nats_cluster.tls_files("auth"))
    payments = await connect_as(nats_cluster.nats_url, nats_cluster.tls_files("payments"))
    ops = await connect_as(nats_cluster.nats_url, nats_cluster.tls_files("ops"))
    try:
        revoked = RevokedTokens()
        follower = RevocationFollower(payments.jetstream(), revoked)
        await follower.catch_up()  # no authorization server yet: nothing, and no error
        assert len(revoked) == 0

        producer = auth.jetstream()
        await streams.ensure_stream(producer, streams.owned_streams(AUTHORIZATION_SERVER)[0], 1)
        early, later, fresh = (str(uuid.uuid4()) for _ in range(3))
        await announce(producer, early)
        await follower.catch_up()
        assert early in revoked
        await announce(producer, later)
        assert await follower.read_new() == 1  # only what is new
        assert later in revoked

        # The stream deleted and created again: its sequence numbers start over, and are read.
        await ops.jetstream().delete_stream(REVOCATIONS_STREAM)
        await streams.ensure_stream(producer, streams.owned_streams(AUTHORIZATION_SERVER)[0], 1)
        await announce(producer, fresh)
        assert await follower.read_new() == 1
        assert fresh in revoked
    finally:
        for client in (auth, payments, ops):
            await client.close()
