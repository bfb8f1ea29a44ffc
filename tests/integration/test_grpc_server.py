"""The gRPC server every service runs: mTLS required, health and reflection, clear UNIMPLEMENTED."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from paysaga import tls
from paysaga.grpc_server import BuiltServer, create_server
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.settings import TlsFiles
from services.payments.adapters import grpc_api
from tests.helpers import channel_without_client_certificate, secure_channel


@pytest.fixture
async def payments_server(certs_dir: Path) -> AsyncIterator[BuiltServer]:
    built = create_server(
        "127.0.0.1:0", tls.server_credentials(TlsFiles.in_directory(certs_dir, "payments")), [grpc_api.grpc_service()]
    )
    await built.set_serving(False)
    await built.server.start()
    yield built
    await built.server.stop(grace=None)


async def health_status(target: str, files: TlsFiles, service: str = "") -> str:
    async with secure_channel(target, files) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def test_health_reports_not_serving_until_the_service_is_ready(
    payments_server: BuiltServer, certs_dir: Path
) -> None:
    target = f"127.0.0.1:{payments_server.port}"
    ops = TlsFiles.in_directory(certs_dir, "ops")

    assert await health_status(target, ops) == "NOT_SERVING"
    await payments_server.set_serving(True)
    assert await health_status(target, ops) == "SERVING"
    assert await health_status(target, ops, "paysaga.payments.v1.PaymentService") == "SERVING"


async def test_reflection_lists_the_api_and_the_standard_services(
    payments_server: BuiltServer, certs_dir: Path
) -> None:
    async with secure_channel(f"127.0.0.1:{payments_server.port}", TlsFiles.in_directory(certs_dir, "ops")) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        listed = [service.name async for response in responses for service in response.list_services_response.service]

    assert set(listed) == {
        "paysaga.payments.v1.PaymentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_call_without_a_client_certificate_fails_at_the_handshake(
    payments_server: BuiltServer, certs_dir: Path
) -> None:
    async with channel_without_client_certificate(f"127.0.0.1:{payments_server.port}", certs_dir / "ca.crt") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_unbuilt_rpc_answers_unimplemented_with_a_readable_message(
    payments_server: BuiltServer, certs_dir: Path
) -> None:
    async with secure_channel(f"127.0.0.1:{payments_server.port}", TlsFiles.in_directory(certs_dir, "ops")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as answer:
            await payments_pb2_grpc.PaymentServiceStub(channel).GetPayment(
                payments_pb2.GetPaymentRequest(payment_id="0b3f3d8e-7f5e-4f8e-9a43-1b1f8d6f2c11"), timeout=5
            )

    assert answer.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert answer.value.details() == "GetPayment is not available in this version of paysaga"


async def test_binding_an_address_in_use_fails_with_a_clear_error(certs_dir: Path) -> None:
    credentials = tls.server_credentials(TlsFiles.in_directory(certs_dir, "payments"))
    first = create_server("127.0.0.1:0", credentials, [])

    await first.server.start()
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            create_server(f"127.0.0.1:{first.port}", credentials, [])
    finally:
        await first.server.stop(grace=None)
