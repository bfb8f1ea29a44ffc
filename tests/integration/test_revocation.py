"""Revoking a certificate, with a CA of the test's own: within seconds of `paysaga-certs revoke`,
every gRPC call made with it is refused (on a connection opened before as on a new one, health
included) and a real nats-server cuts it off; the other certificates go on."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.ops.cluster.localcluster import ClusterPorts, LocalCluster
from paysaga.ops.pki import revocation, rotation
from paysaga.ops.pki.cli import main as certs_main
from paysaga.runtime.grpc_server import BuiltServer
from paysaga.runtime.security.revocation import CRL_FILE, RevocationList
from paysaga.runtime.settings import TlsFiles
from services.ledger.adapters import grpc_api
from tests.helpers import client_token, connect_as, eventually, secure_channel, wait_for_log
from tests.integration.ledger_server import running_ledger

MIGRATIONS = Path(grpc_api.__file__).parents[1] / "migrations"


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[BuiltServer, Path]]:
    certs = tmp_path / "certs"
    rotation.bootstrap(certs, certs)
    assert certs_main(["--dir", str(certs), "issue", "client", "acme-shop"]) == 0
    revocations = RevocationList(certs / CRL_FILE, certs / "ca.crt", check_interval_s=0.1)
    async with running_ledger(certs, tmp_path / "ledger.db", revocations=revocations) as built:
        await built.set_serving(True)
        yield built, certs


async def balance_call(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance(
            ledger_pb2.GetBalanceRequest(account_id="9b2f4c1e-0d7a-4e3b-8c5f-6a1d2e3f4b5c"), timeout=5
        )
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def health_call(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_a_revoked_certificate_is_refused_within_seconds_even_on_an_open_connection(
    ledger: tuple[BuiltServer, Path],
) -> None:
    server, certs = ledger
    target = f"127.0.0.1:{server.port}"
    shop = TlsFiles.in_directory(certs, "acme-shop")
    token = client_token(certs, "acme-shop", scopes=("ledger:read",))
    async with (
        secure_channel(target, shop, token) as before,
        secure_channel(target, TlsFiles.in_directory(certs, "ops"), client_token(certs)) as ops,
    ):
        assert await balance_call(before) == grpc.StatusCode.NOT_FOUND  # let in (no such account)

        assert certs_main(["--dir", str(certs), "revoke", "acme-shop"]) == 0

        async def refused() -> bool:
            return bool(await balance_call(before) == grpc.StatusCode.UNAUTHENTICATED)

        await eventually(refused, "the open connection's calls are refused", timeout_s=5)
        assert await health_call(before) == grpc.StatusCode.UNAUTHENTICATED
        async with secure_channel(target, shop, token) as after:
            assert await balance_call(after) == grpc.StatusCode.UNAUTHENTICATED
        assert await balance_call(ops) == grpc.StatusCode.NOT_FOUND, "other certificates go on"
        assert await health_call(ops) == grpc.StatusCode.OK


async def test_reissuing_can_revoke_the_certificate_it_replaces(
    ledger: tuple[BuiltServer, Path], tmp_path: Path
) -> None:
    server, certs = ledger
    target = f"127.0.0.1:{server.port}"
    old = tmp_path / "old"
    old.mkdir()
    for suffix in (".crt", ".key"):
        shutil.copy2(certs / f"acme-shop{suffix}", old / f"acme-shop{suffix}")  # the key stays 0600
    (old / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    old_token = client_token(certs, "acme-shop", scopes=("ledger:read",), certificate=old / "acme-shop.crt")

    assert certs_main(["--dir", str(certs), "issue", "client", "acme-shop", "--force", "--revoke-old"]) == 0
    await asyncio.sleep(0.2)  # longer than the server's check interval (0.1 s) here

    new_token = client_token(certs, "acme-shop", scopes=("ledger:read",))
    async with secure_channel(target, TlsFiles.in_directory(certs, "acme-shop"), new_token) as channel:
        assert await balance_call(channel) == grpc.StatusCode.NOT_FOUND
    async with secure_channel(target, TlsFiles.in_directory(old, "acme-shop"), old_token) as channel:
        assert await balance_call(channel) == grpc.StatusCode.UNAUTHENTICATED
    assert len(revocation.revoked_serials(certs)) == 1


def test_a_crl_not_signed_by_a_trusted_ca_changes_nothing(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    rotation.bootstrap(ours, ours)
    rotation.bootstrap(theirs, theirs)
    victim = revocation.serial_of(ours / "ops.crt")
    revocation.revoke(theirs, theirs, [victim])  # a CRL from another CA, naming our ops certificate
    (ours / CRL_FILE).write_bytes((theirs / CRL_FILE).read_bytes())

    assert not RevocationList(ours / CRL_FILE, ours / "ca.crt").is_revoked(victim)
    revocation.revoke(ours, ours, [victim])
    assert RevocationList(ours / CRL_FILE, ours / "ca.crt").is_revoked(victim)


async def test_nats_cuts_off_a_revoked_certificate_and_lets_its_successor_in(tmp_path: Path) -> None:
    """nats-server reads no CRL: the local cluster pins the keys it may accept and reloads it
    when a certificate is revoked, which closes the connections made with that certificate."""
    certs = tmp_path / "certs"
    with LocalCluster(tmp_path / "state", certs, ClusterPorts.free(), services=()) as cluster:
        old = tmp_path / "old-ops"
        old.mkdir()
        for suffix in (".crt", ".key"):
            shutil.copy2(certs / f"ops{suffix}", old / f"ops{suffix}")
        shutil.copy2(certs / "ca.crt", old / "ca.crt")
        old_ops = TlsFiles.in_directory(old, "ops")
        connected = await connect_as(cluster.nats_url, old_ops)
        assert connected.is_connected

        assert certs_main(["--dir", str(certs), "issue", "client", "ops", "--force", "--revoke-old"]) == 0

        async def cut_off() -> bool:
            return not connected.is_connected

        await eventually(cut_off, "the connection made with the revoked certificate is closed", timeout_s=10)
        with pytest.raises(Exception):  # noqa: B017 - nats-py reports a refused handshake in several ways
            await connect_as(cluster.nats_url, old_ops)
        successor = await connect_as(cluster.nats_url, cluster.tls_files("ops"))
        assert successor.is_connected
        await successor.close()
        assert "certificate not pinned" in wait_for_log(cluster, "nats", "certificate not pinned")


def test_an_unreadable_crl_does_not_give_a_revoked_key_back_its_pin(tmp_path: Path) -> None:
    rotation.bootstrap(tmp_path, tmp_path)
    pins = revocation.NatsPins(tmp_path)
    ops_pin = revocation.public_key_pin(x509.load_pem_x509_certificate((tmp_path / "ops.crt").read_bytes()))
    assert ops_pin in pins.pins

    revocation.revoke(tmp_path, tmp_path, [revocation.serial_of(tmp_path / "ops.crt")])
    assert pins.refresh() and ops_pin not in pins.pins
    (tmp_path / CRL_FILE).write_text("half a file")  # caught mid-rewrite
    assert not pins.refresh() and ops_pin not in pins.pins
