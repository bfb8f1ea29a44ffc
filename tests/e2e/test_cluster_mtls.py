"""The whole cluster over mutual TLS, as a client and an operator meet it."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from paysaga.core.eventing import new_event, subject_of
from paysaga.events.v1 import events_pb2
from paysaga.ops.client import healthcheck
from paysaga.ops.cluster.localcluster import SERVICES, LocalCluster
from paysaga.runtime.settings import TlsFiles
from tests.helpers import (
    channel_without_client_certificate,
    connect_as,
    connect_nats,
    secure_channel,
    ssl_context_without_client_certificate,
    wait_for_log,
)

pytestmark = pytest.mark.e2e

API = {
    "payments": "paysaga.payments.v1.PaymentService",
    "inventory": "paysaga.inventory.v1.InventoryService",
    "ledger": "paysaga.ledger.v1.LedgerService",
}


@pytest.mark.parametrize("service", SERVICES)
async def test_health_answers_serving_over_mtls(cluster: LocalCluster, service: str) -> None:
    ops = cluster.tls_files("ops")
    target = cluster.grpc_target(service)

    assert await healthcheck.grpc_status(target, ops) == "SERVING"
    assert await healthcheck.grpc_status(target, ops, service=API[service]) == "SERVING"


@pytest.mark.parametrize("service", SERVICES)
async def test_reflection_shows_the_service_api(cluster: LocalCluster, service: str) -> None:
    async with secure_channel(cluster.grpc_target(service), cluster.tls_files("ops")) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        listed = [
            name.name
            async for reply in stub.ServerReflectionInfo(iter([request]))
            for name in reply.list_services_response.service
        ]

    assert API[service] in listed and "grpc.health.v1.Health" in listed


@pytest.mark.parametrize("service", SERVICES)
async def test_call_without_a_client_certificate_fails(cluster: LocalCluster, service: str) -> None:
    async with channel_without_client_certificate(
        cluster.grpc_target(service), cluster.certs_dir / "ca.crt"
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The server is up: the same call with our client certificate goes through.
    assert await healthcheck.grpc_status(cluster.grpc_target(service), cluster.tls_files("ops")) == "SERVING"


@pytest.mark.parametrize("service", SERVICES)
async def test_call_with_a_certificate_from_another_ca_fails(
    cluster: LocalCluster, foreign_certs_dir: Path, service: str
) -> None:
    # A well-formed client certificate and key, trusting our CA for the server: only the issuer is wrong.
    foreign = TlsFiles(foreign_certs_dir / "ops.crt", foreign_certs_dir / "ops.key", cluster.certs_dir / "ca.crt")

    async with secure_channel(cluster.grpc_target(service), foreign) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The server is up: the same call with our client certificate goes through.
    assert await healthcheck.grpc_status(cluster.grpc_target(service), cluster.tls_files("ops")) == "SERVING"


async def test_client_refuses_a_server_whose_certificate_is_from_another_ca(
    cluster: LocalCluster, foreign_certs_dir: Path
) -> None:
    # Our client certificate, but trusting only the other CA: the client must not talk to our server.
    ops = cluster.tls_files("ops")
    distrustful = TlsFiles(ops.cert_file, ops.key_file, foreign_certs_dir / "ca.crt")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await healthcheck.grpc_status(cluster.grpc_target("ledger"), distrustful)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_nats_refuses_a_connection_without_a_client_certificate(cluster: LocalCluster) -> None:
    with pytest.raises(Exception):  # noqa: B017 - nats-py reports a dropped handshake in several ways
        # The first node, whose log is read below (a cluster's client picks any node).
        first = cluster.nats_nodes[0]
        await connect_nats(first.url, ssl_context_without_client_certificate(cluster.certs_dir / "ca.crt"))

    wait_for_log(cluster, first.name, "client didn't provide a certificate")


async def test_nats_accepts_a_service_certificate_and_jetstream_holds_each_services_streams(
    cluster: LocalCluster,
) -> None:
    ops = await connect_as(cluster.nats_url, cluster.tls_files("ops"))
    try:
        streams = {info.config.name: info.config.subjects for info in await ops.jetstream().streams_info()}
    finally:
        await ops.close()
    client = await connect_as(cluster.nats_url, cluster.tls_files("payments"))
    try:
        jetstream = client.jetstream()
        # A notice that belongs to no purchase: a made-up purchase event would be a payment the
        # payments database never had (the nightly reconciliation rightly reports such a one).
        event = new_event(
            producer="payments",
            saga_id=str(uuid.uuid4()),
            payload=events_pb2.TrafficSpikeDetected(kind="region", key="ZZ", count=1),
        )
        ack = await jetstream.publish(
            subject_of(event), event.SerializeToString(), headers={"Nats-Msg-Id": event.event_id}, timeout=5
        )
    finally:
        await client.close()

    for service in SERVICES:
        assert streams[f"{service.upper()}_EVENTS"] == [f"paysaga.events.{service}.>"]
        assert streams[f"{service.upper()}_DEAD_LETTERS"] == [f"paysaga.deadletter.{service}.>"]
    assert ack.stream == "PAYMENTS_EVENTS" and ack.seq >= 1
