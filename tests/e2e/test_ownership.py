"""Who may touch which money, through the whole cluster with clients of their own: a shop that
sells, a buyer, and another buyer trying what is not hers. Every refusal has its status, shows
nothing of the record and changes nothing; ops may do everything, and it is logged."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from paysaga.common.v1.money_pb2 import Money
from paysaga.core.identity import client_identity
from paysaga.inventory.v1 import inventory_pb2
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.ops.client.clients import ServiceClients
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.ops.pki import authority
from paysaga.ops.pki.authority import Kind
from paysaga.payments.v1 import payments_pb2
from paysaga.runtime.settings import TlsFiles
from tests.e2e.shop import Shop
from tests.helpers import client_token, eventually, secure_channel

pytestmark = pytest.mark.e2e
CLIENT_SCOPES = (
    "payments:read",
    "payments:write",
    "ledger:read",
    "ledger:write",
    "inventory:read",
    "inventory:write",
)
PRICE = 1250


def as_client(cluster: LocalCluster, directory: Path, name: str) -> ServiceClients:
    """Channels to the cluster as the client `name`: its own certificate, and a token with the
    scopes any client may be given (no admin scope)."""
    authority.issue(authority.load_ca(cluster.certs_dir), directory, name, Kind.CLIENT, force=True)
    (directory / "ca.crt").write_bytes((cluster.certs_dir / "ca.crt").read_bytes())
    targets = {service: cluster.targets(service) for service in cluster.services}
    token = client_token(cluster.certs_dir, name, scopes=CLIENT_SCOPES, certificate=directory / f"{name}.crt")
    return ServiceClients(targets, TlsFiles.in_directory(directory, name), token)


@dataclass
class World:
    shop: Shop  # ops
    acme: ServiceClients  # sells the item, owns the merchant account
    alice: ServiceClients  # owns the wallet and pays
    mallory: ServiceClients  # owns a wallet of her own, nothing else
    wallet: str
    mallorys_wallet: str
    merchant: str
    sku: str
    payment_id: str = ""
    key: str = ""


@pytest.fixture
async def world(shop: Shop, tmp_path: Path) -> AsyncIterator[World]:
    acme = as_client(shop.cluster, tmp_path / "acme", "acme-shop")
    alice = as_client(shop.cluster, tmp_path / "alice", "alice")
    mallory = as_client(shop.cluster, tmp_path / "mallory", "mallory")
    try:
        # The shop opens its own merchant account and sells its own item.
        merchant = await acme.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT, currency="EUR", owner="Acme", timeout_s=10)
        sku = f"mug-{uuid.uuid4().hex[:8]}"
        await acme.add_item(sku, name="Mug", price_minor=PRICE, currency="EUR", stock=3, timeout_s=10)
        # Ops open and fund the buyers' wallets for them (a deposit is money entering: ops only).
        wallets = []
        for name in ("alice", "mallory"):
            account_id = str(uuid.uuid4())
            await shop.ledger.OpenAccount(
                ledger_pb2.OpenAccountRequest(
                    account_id=account_id,
                    kind=ledger_pb2.ACCOUNT_KIND_WALLET,
                    currency="EUR",
                    owner=name,
                    owner_client=name,
                ),
                timeout=10,
            )
            await shop.ledger.Deposit(
                ledger_pb2.DepositRequest(
                    account_id=account_id,
                    amount=Money(amount_minor=5000, currency="EUR"),
                    deposit_id=str(uuid.uuid4()),
                ),
                timeout=10,
            )
            wallets.append(account_id)
        yield World(shop, acme, alice, mallory, wallets[0], wallets[1], merchant, sku)
    finally:
        for clients in (acme, alice, mallory):
            await clients.close()


def purchase(world: World, key: str, payer: str = "") -> payments_pb2.CreatePaymentRequest:
    return payments_pb2.CreatePaymentRequest(
        idempotency_key=key,
        payer_account_id=payer or world.wallet,
        merchant_account_id=world.merchant,
        sku=world.sku,
        quantity=1,
        amount=Money(amount_minor=PRICE, currency="EUR"),
    )


async def alice_buys(world: World) -> payments_pb2.Payment:
    """Alice's purchase, once payments has heard of her wallet, the shop's account and its item
    (a moment after they were created: until then the answer is PERMISSION_DENIED, try again)."""
    world.key = f"order-{uuid.uuid4().hex[:8]}"
    created = await once_known(world.alice, purchase(world, world.key), "Alice's wallet and the shop's item")
    world.payment_id = created.payment.payment_id
    return await world.shop.finish(world.payment_id)


async def once_known(
    client: ServiceClients, request: payments_pb2.CreatePaymentRequest, what: str
) -> payments_pb2.CreatePaymentResponse:
    """CreatePayment, retried while payments has not yet heard of the accounts and the item (they
    come on the compensation lane, not necessarily before a purchase's events on a tier's)."""
    created: list[payments_pb2.CreatePaymentResponse] = []

    async def accepted() -> bool:
        try:
            created.append(await client.payments.CreatePayment(request, timeout=10))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
            return False
        return True

    await eventually(accepted, f"payments knows {what}")
    return created[-1]


async def snapshot(world: World) -> tuple[Any, ...]:
    listed = await world.shop.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=500), timeout=10)
    return (
        await world.shop.balance(world.wallet),
        await world.shop.balance(world.mallorys_wallet),
        await world.shop.balance(world.merchant),
        await world.shop.stock(world.sku),
        sorted((payment.payment_id, payment.status) for payment in listed.payments),
    )


Attempt = Callable[[World], Awaitable[object]]
# (what is tried, by whom, the status; nothing may change)
REFUSALS: list[tuple[str, Attempt, grpc.StatusCode, str]] = [
    (
        "Mallory pays from Alice's wallet",
        lambda w: w.mallory.payments.CreatePayment(purchase(w, "m-1"), timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "payer_account_id {wallet} is not a wallet of yours",
    ),
    (
        "Mallory reads Alice's payment",
        lambda w: w.mallory.payments.GetPayment(payments_pb2.GetPaymentRequest(payment_id=w.payment_id), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "payment {payment} does not exist",
    ),
    (
        "Mallory watches Alice's payment",
        lambda w: _drain(w.mallory.payments.WatchPayment(payments_pb2.WatchPaymentRequest(payment_id=w.payment_id))),
        grpc.StatusCode.NOT_FOUND,
        "payment {payment} does not exist",
    ),
    (
        "Mallory refunds Alice's payment",
        lambda w: w.mallory.payments.RefundPayment(
            payments_pb2.RefundPaymentRequest(payment_id=w.payment_id), timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
        "payment {payment} does not exist",
    ),
    (
        "Alice, the payer, refunds (only the merchant refunds)",
        lambda w: w.alice.payments.RefundPayment(
            payments_pb2.RefundPaymentRequest(payment_id=w.payment_id), timeout=10
        ),
        grpc.StatusCode.NOT_FOUND,
        "payment {payment} does not exist",
    ),
    (
        "Mallory reads Alice's balance",
        lambda w: w.mallory.ledger.GetBalance(ledger_pb2.GetBalanceRequest(account_id=w.wallet), timeout=10),
        grpc.StatusCode.NOT_FOUND,
        "account {wallet} does not exist",
    ),
    (
        "Mallory stocks the shop's item",
        lambda w: w.mallory.inventory.ReceiveStock(
            inventory_pb2.ReceiveStockRequest(sku=w.sku, quantity=5, receipt_id=str(uuid.uuid4())), timeout=10
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "SKU {sku} is sold by another client",
    ),
    (
        "Mallory opens an account for Alice",
        lambda w: w.mallory.ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(
                account_id=str(uuid.uuid4()),
                kind=ledger_pb2.ACCOUNT_KIND_WALLET,
                currency="EUR",
                owner="x",
                owner_client="alice",
            ),
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "only ops (ledger:admin) may create records for another client",
    ),
    (
        "Mallory deposits (money enters through ops only)",
        lambda w: w.mallory.ledger.Deposit(
            ledger_pb2.DepositRequest(
                account_id=w.mallorys_wallet,
                amount=Money(amount_minor=10, currency="EUR"),
                deposit_id=str(uuid.uuid4()),
            ),
            timeout=10,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        f"{client_identity('mallory')} needs the scope ledger:admin to call /paysaga.ledger.v1.LedgerService/Deposit",
    ),
]


async def _drain(call: Any) -> None:
    async for _update in call:
        pass


async def test_each_client_touches_only_its_own_records_and_a_refusal_changes_nothing(world: World) -> None:
    assert (await alice_buys(world)).status == payments_pb2.PAYMENT_STATUS_COMPLETED

    async def sale_committed() -> bool:  # inventory commits the sale on the ledger's capture, apart from payments
        return (await world.shop.stock(world.sku))[1] == 0

    await eventually(sale_committed, "inventory committing the sale")
    before = await snapshot(world)
    ids = {"wallet": world.wallet, "payment": world.payment_id, "sku": world.sku}

    for what, attempt, code, message in REFUSALS:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await attempt(world)
        assert (refused.value.code(), message.format(**ids) in (refused.value.details() or "")) == (code, True), what
    assert await snapshot(world) == before, "no refusal changed anything"

    # What each may see: Alice and the shop list her payment, Mallory lists nothing of theirs.
    for clients, expected in ((world.alice, [world.payment_id]), (world.acme, [world.payment_id]), (world.mallory, [])):
        listed = await clients.payments.ListPayments(payments_pb2.ListPaymentsRequest(), timeout=10)
        assert [payment.payment_id for payment in listed.payments] == expected
    # The fraud rules' decision is for ops: it would show a client how to stay under the rules.
    request = payments_pb2.GetPaymentRequest(payment_id=world.payment_id)
    assert not (await world.alice.payments.GetPayment(request, timeout=10)).HasField("decision")
    assert (await world.shop.payment(world.payment_id)).decision.payment_id == world.payment_id

    # Keys are each client's own: Mallory's use of Alice's key is a payment of hers, not a replay.
    mine = await once_known(world.mallory, purchase(world, world.key, world.mallorys_wallet), "Mallory's wallet")
    assert not mine.replayed and mine.payment.payment_id != world.payment_id

    # The merchant refunds; the money and the mug go back.
    refunding = await world.acme.payments.RefundPayment(
        payments_pb2.RefundPaymentRequest(payment_id=world.payment_id, reason="damaged"), timeout=10
    )
    assert refunding.status == payments_pb2.PAYMENT_STATUS_REFUNDING
    assert (await world.shop.finish(world.payment_id)).status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert (
        await world.alice.ledger.GetBalance(ledger_pb2.GetBalanceRequest(account_id=world.wallet), timeout=10)
    ).available_minor == 5000


async def test_ops_may_read_any_account_and_each_such_call_is_audited(world: World) -> None:
    cluster = world.shop.cluster
    before = len(audit_lines(cluster))
    async with secure_channel(  # the first ledger process, whose log is read below
        cluster.grpc_target("ledger"), cluster.tls_files("ops"), client_token(cluster.certs_dir)
    ) as channel:
        balance = await ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance(
            ledger_pb2.GetBalanceRequest(account_id=world.mallorys_wallet), timeout=10
        )
    assert balance.available_minor == 5000
    # This call's line: the ledger's log holds one more audit line for GetBalance than before it.
    line = audit_line(cluster, before + 1)
    assert client_identity("ops") in line


def audit_lines(cluster: LocalCluster) -> list[str]:
    log = cluster.log_path("ledger").read_text(errors="replace").splitlines()
    return [line for line in log if '"event":"audit.admin_call"' in line and "LedgerService/GetBalance" in line]


def audit_line(cluster: LocalCluster, count: int) -> str:
    """The count-th audit line of a GetBalance call, once the ledger has written it."""
    deadline = time.monotonic() + 10
    while len(lines := audit_lines(cluster)) < count:
        assert time.monotonic() < deadline, f"only {len(lines)} audit lines, expected {count}"
        time.sleep(0.05)
    return lines[count - 1]
