"""The gRPC server every service runs (here the ledger's, on a real SQLite file): mTLS required,
health and reflection, domain errors as clear status codes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.ops.pki import authority
from paysaga.ops.pki.authority import Kind
from paysaga.runtime.grpc_server import BuiltServer, create_server
from paysaga.runtime.security import tls, tokens
from paysaga.runtime.security.ratelimit import Limit, RateLimiter
from paysaga.runtime.settings import TlsFiles
from services.ledger.adapters import grpc_api
from tests.helpers import channel_without_client_certificate, client_token, secure_channel
from tests.integration.ledger_server import running_ledger

LEDGER_MIGRATIONS = Path(grpc_api.__file__).parents[1] / "migrations"


@pytest.fixture
async def ledger_server(certs_dir: Path, tmp_path: Path) -> AsyncIterator[BuiltServer]:
    async with running_ledger(certs_dir, tmp_path / "ledger.db") as built:
        yield built


async def health_status(target: str, files: TlsFiles, service: str = "") -> str:
    async with secure_channel(target, files) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def test_health_reports_not_serving_until_the_service_is_ready(
    ledger_server: BuiltServer, certs_dir: Path
) -> None:
    target = f"127.0.0.1:{ledger_server.port}"
    ops = TlsFiles.in_directory(certs_dir, "ops")

    assert await health_status(target, ops) == "NOT_SERVING"
    await ledger_server.set_serving(True)
    assert await health_status(target, ops) == "SERVING"
    assert await health_status(target, ops, "paysaga.ledger.v1.LedgerService") == "SERVING"


async def test_reflection_lists_the_api_and_the_standard_services(ledger_server: BuiltServer, certs_dir: Path) -> None:
    async with secure_channel(f"127.0.0.1:{ledger_server.port}", TlsFiles.in_directory(certs_dir, "ops")) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        listed = [service.name async for response in responses for service in response.list_services_response.service]

    assert set(listed) == {
        "paysaga.ledger.v1.LedgerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }


async def test_reflection_v1_answers_under_its_own_name(ledger_server: BuiltServer, certs_dir: Path) -> None:
    """What newer tools ask first: the v1 method, whose messages are v1alpha's, field for field."""
    async with secure_channel(f"127.0.0.1:{ledger_server.port}", TlsFiles.in_directory(certs_dir, "ops")) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="paysaga.ledger.v1.LedgerService"),
        ]
        responses = [response async for response in call(iter(requests))]

    assert "paysaga.ledger.v1.LedgerService" in {
        service.name for service in responses[0].list_services_response.service
    }
    assert responses[1].file_descriptor_response.file_descriptor_proto, "the API's descriptors are served"


async def test_call_without_a_client_certificate_fails_at_the_handshake(
    ledger_server: BuiltServer, certs_dir: Path
) -> None:
    async with channel_without_client_certificate(f"127.0.0.1:{ledger_server.port}", certs_dir / "ca.crt") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_domain_errors_become_status_codes_with_readable_messages(
    ledger_server: BuiltServer, certs_dir: Path
) -> None:
    unknown_account = "0b3f3d8e-7f5e-4f8e-9a43-1b1f8d6f2c11"
    ops = TlsFiles.in_directory(certs_dir, "ops")
    async with secure_channel(f"127.0.0.1:{ledger_server.port}", ops, client_token(certs_dir)) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id=unknown_account), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as malformed:
            await stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id="not-a-uuid"), timeout=5)

    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == f"account {unknown_account} does not exist"
    assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.value.details() == "account_id must be a UUID, got 'not-a-uuid'"


async def test_binding_an_address_in_use_fails_with_a_clear_error(certs_dir: Path) -> None:
    credentials = tls.server_credentials(TlsFiles.in_directory(certs_dir, "payments"))
    first = create_server("127.0.0.1:0", credentials, [])

    await first.server.start()
    try:
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}"):
            create_server(f"127.0.0.1:{first.port}", credentials, [])
    finally:
        await first.server.stop(grace=None)


async def test_a_client_over_its_rate_limit_is_refused_with_a_pushback_and_others_go_on(
    certs_dir: Path, tmp_path: Path
) -> None:
    shop_dir = tmp_path / "acme"
    authority.issue(authority.load_ca(certs_dir), shop_dir, "acme-shop", Kind.CLIENT)
    (shop_dir / "ca.crt").write_bytes((certs_dir / "ca.crt").read_bytes())
    # Registered with a write limit of 1 per second, 2 at once.
    token = tokens.issue_client_token(
        certs_dir,
        "acme-shop",
        services=["ledger"],
        scopes=["ledger:write", "ledger:read"],
        certificate=shop_dir / "acme-shop.crt",
        rate_limits={"write": Limit(1, 2)},
    )

    def opening() -> ledger_pb2.OpenAccountRequest:
        return ledger_pb2.OpenAccountRequest(
            account_id=str(uuid.uuid4()), kind=ledger_pb2.ACCOUNT_KIND_WALLET, currency="EUR", owner="acme"
        )

    async with running_ledger(certs_dir, tmp_path / "ledger.db", limiter=RateLimiter()) as built:
        target = f"127.0.0.1:{built.port}"
        async with secure_channel(target, TlsFiles.in_directory(shop_dir, "acme-shop"), token) as channel:
            shop = ledger_pb2_grpc.LedgerServiceStub(channel)
            for _ in range(2):
                await shop.OpenAccount(opening(), timeout=5)
            third = opening()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await shop.OpenAccount(third, timeout=5)
            # Reads are another class: still fine.
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await shop.GetBalance(ledger_pb2.GetBalanceRequest(account_id=third.account_id), timeout=5)
        async with secure_channel(target, TlsFiles.in_directory(certs_dir, "ops"), client_token(certs_dir)) as channel:
            await ledger_pb2_grpc.LedgerServiceStub(channel).OpenAccount(opening(), timeout=5)  # ops: not held up

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its write rate limit here; retry in" in (refused.value.details() or "")
    trailers = dict(refused.value.trailing_metadata() or ())
    assert 1 <= int(trailers["grpc-retry-pushback-ms"]) <= 1000 and trailers["retry-after-ms"]
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, "the refused call opened nothing"
