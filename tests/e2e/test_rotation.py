"""Certificate rotation without downtime, on a cluster with its own CA: re-issuing certificates
while purchases run fails nothing and new connections see the new certificates; a CA rollover
trusts both CAs in between and only the new one after."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from paysaga.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from paysaga.ledger.v1 import ledger_pb2
from paysaga.ops.cluster.localcluster import ClusterPorts, LocalCluster
from paysaga.ops.pki import authority, rotation
from paysaga.ops.pki.authority import Kind
from paysaga.payments.v1 import payments_pb2
from paysaga.runtime.settings import TlsFiles
from tests.e2e.shop import Purchase, Shop
from tests.e2e.test_saga import settled
from tests.helpers import client_token, eventually, secure_channel, wait_for_log

pytestmark = pytest.mark.e2e
PURCHASES = 40


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster whose certificates this module may rotate: its own CA in its own directory."""
    state = tmp_path_factory.mktemp("rotation")
    with LocalCluster(state / "run", state / "certs", ClusterPorts.free()) as cluster:
        yield cluster


@pytest.fixture
async def shop(own_cluster: LocalCluster) -> AsyncIterator[Shop]:
    client = Shop(own_cluster)
    yield client
    await client.close()


def presented_serial(port: int, client: TlsFiles, *, nats: bool = False) -> int:
    """Open a new TLS connection and return the serial number of the certificate the server shows."""
    context = ssl.create_default_context(cafile=str(client.ca_file))
    context.load_cert_chain(str(client.cert_file), str(client.key_file))
    if not nats:
        context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def wait_until(condition: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


# What each process logs once it has re-read changed certificate files: a service's NATS client
# (its gRPC server re-reads them at its next handshake), and nats-server on the reload its
# supervisor signals.
RELOADED = {
    "payments": '"event":"tls.client_reloaded"',
    "ledger": '"event":"tls.client_reloaded"',
    "inventory": '"event":"tls.client_reloaded"',
    "nats": "Reloaded server configuration",
}


def reloads(cluster: LocalCluster) -> dict[str, int]:
    counts = {}
    for name, text in RELOADED.items():
        path = cluster.log_path(name)
        counts[name] = path.read_text(errors="replace").count(text) if path.exists() else 0
    return counts


async def every_process_reloaded(cluster: LocalCluster, before: dict[str, int]) -> None:
    """Wait (bounded) until every process has re-read the certificate files since before."""

    async def done() -> bool:
        return all(count > before[name] for name, count in reloads(cluster).items())

    await eventually(done, f"every process reloaded its certificates (before: {before}, now: {reloads(cluster)})")


async def test_reissuing_certificates_under_load_fails_nothing_and_new_connections_see_them(
    own_cluster: LocalCluster, shop: Shop
) -> None:
    cluster = own_cluster
    ops = cluster.tls_files("ops")
    purchases = [
        Purchase(
            await shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, funds_minor=10_000),
            await shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT),
            await shop.add_item(stock=5),
        )
        for _ in range(PURCHASES // 4)
    ]

    async def buy(index: int) -> int:
        await asyncio.sleep(index * 0.15)  # a steady trickle across the rotation
        payment = await shop.pay(purchases[index % len(purchases)], amount_minor=1250)
        return (await shop.finish(payment.payment_id)).status

    load = [asyncio.create_task(buy(index)) for index in range(PURCHASES)]
    await asyncio.sleep(1.0)
    ca = authority.load_ca(cluster.certs_dir)
    before = {name: serial_of(cluster.tls_files(name).cert_file) for name in ("payments", "ledger", "nats")}
    for name in ("payments", "ledger", "nats"):
        await asyncio.to_thread(authority.issue, ca, cluster.certs_dir, name, Kind.SERVICE, force=True)
    statuses = await asyncio.gather(*load)

    assert statuses == [payments_pb2.PAYMENT_STATUS_COMPLETED] * PURCHASES, "no purchase failed"
    for name, port in (("payments", cluster.ports.grpc["payments"]), ("ledger", cluster.ports.grpc["ledger"])):
        new = serial_of(cluster.tls_files(name).cert_file)
        assert new != before[name]
        wait_until(lambda port=port, new=new: presented_serial(port, ops) == new)
        assert '"event":"tls.reloaded"' in wait_for_log(cluster, name, '"event":"tls.reloaded"')
        wait_for_log(cluster, name, '"event":"tls.client_reloaded"')  # its next NATS connection uses it too
    new_nats = serial_of(cluster.tls_files("nats").cert_file)
    wait_until(lambda: presented_serial(cluster.ports.nats, ops, nats=True) == new_nats)
    await settled(shop)


async def test_a_ca_rollover_trusts_both_cas_in_between_and_only_the_new_one_after(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = own_cluster
    certs = cluster.certs_dir
    old_ops = TlsFiles(tmp_path / "ops.crt", tmp_path / "ops.key", certs / "ca.crt")
    shutil.copy(certs / "ops.crt", old_ops.cert_file)
    shutil.copy2(certs / "ops.key", old_ops.key_file)
    old_token = client_token(certs)  # bound to the old ops certificate

    async def list_items(files: TlsFiles, token: str) -> grpc.StatusCode:
        try:
            async with secure_channel(cluster.grpc_target("inventory"), files, token) as channel:
                await inventory_pb2_grpc.InventoryServiceStub(channel).ListItems(
                    inventory_pb2.ListItemsRequest(), timeout=5
                )
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    before = reloads(cluster)
    rotation.begin_ca_rollover(certs, certs)
    await every_process_reloaded(cluster, before)
    # Clients too must hold the new bundle before servers switch to certificates of the new CA.
    shop = Shop(cluster)
    report = rotation.bootstrap(certs, certs)
    # nats, four services, the reconciliation, ops
    assert sum(line.startswith("issued") for line in report) == 7
    # A token is bound to its certificate: the re-issued ops certificate needs its own (as
    # 'paysaga-certs bootstrap --client-tokens' writes it), and the old token does not fit it.
    rotation.write_ops_token(certs, certs, "ops")
    new_token = client_token(certs)
    assert await list_items(cluster.tls_files("ops"), old_token) == grpc.StatusCode.UNAUTHENTICATED

    assert await list_items(old_ops, old_token) == grpc.StatusCode.OK, "the old CA is still trusted during the rollover"
    assert await list_items(cluster.tls_files("ops"), new_token) == grpc.StatusCode.OK
    try:
        wallet = await shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, funds_minor=5000)
        merchant = await shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT)
        during = Purchase(wallet, merchant, await shop.add_item(stock=2))
        payment = await shop.pay(during, amount_minor=1250)
        assert (await shop.finish(payment.payment_id)).status == payments_pb2.PAYMENT_STATUS_COMPLETED
    finally:
        await shop.close()

    before = reloads(cluster)
    assert rotation.finish_ca_rollover(certs, certs) == []
    await every_process_reloaded(cluster, before)

    assert await list_items(old_ops, old_token) == grpc.StatusCode.UNAVAILABLE, "the old CA is no longer trusted"
    assert await list_items(cluster.tls_files("ops"), new_token) == grpc.StatusCode.OK
    fresh = Shop(cluster)  # a new client with the new trust bundle
    try:
        payment = await fresh.pay(during, amount_minor=1250)
        assert (await fresh.finish(payment.payment_id)).status == payments_pb2.PAYMENT_STATUS_COMPLETED
    finally:
        await fresh.close()
