"""What a user of the compose cluster relies on, checked for real.

From the host, only through the published 127.0.0.1 port, with a client certificate and token
made the documented way (streamed out of the certs container): purchases that complete and that
fail with their compensation, and, on the production profile, 50 purchases that all end while one
replica of every service is killed. Accounts, stock and balances go through the ops client
inside the private network, as the README shows. Then that nothing else is reachable from the
host, and that NATS refuses a client without a certificate even inside the network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from paysaga import tls
from paysaga.common.v1.money_pb2 import Money
from paysaga.compose.project import SERVICES, ComposeProject
from paysaga.files import write_file
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.pki.authority import CERTIFICATE_MODE, PRIVATE_KEY_MODE
from paysaga.settings import TlsFiles

Say = Callable[[str], None]
CURRENCY = "EUR"
PRICE_MINOR = 1250
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "REJECTED", "REFUNDED"})
# Transient on the way to a replica that was just killed: the same request is sent again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CALL_TIMEOUT_S = 10.0
# Saga timeout (30 s) plus a redelivery after a consumer died (ack wait 10 s), with room to spare.
PAYMENT_END_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.25
CHAOS_PURCHASES = 50
CHAOS_CONCURRENCY = 10
NATS_PROBE = Path(__file__).with_name("nats_probe.py")


class CheckFailed(Exception):
    """Something a user relies on does not hold; the message says what was expected and seen."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# -- a client on the host ------------------------------------------------------------------------


@dataclass(frozen=True)
class HostClient:
    files: TlsFiles
    token: str


def issue_host_client(project: ComposeProject, directory: Path, name: str) -> HostClient:
    """A client certificate, key and token for payments, streamed out of the certs container as the
    README shows (the key and token created 0600)."""
    project.one_off("certs", "paysaga-certs", "issue", "client", name)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt")
    for path, mode in (
        (files.ca_file, CERTIFICATE_MODE),
        (files.cert_file, CERTIFICATE_MODE),
        (files.key_file, PRIVATE_KEY_MODE),
    ):
        write_file(path, project.one_off("certs", "cat", f"/certs/{path.name}").encode(), mode)
    token = project.one_off(
        "certs", "paysaga-certs", "token", "issue", name,
        "--audience", "payments", "--scope", "payments:write", "--scope", "payments:read",
    ).strip()  # fmt: skip
    write_file(directory / f"{name}.token", token.encode(), PRIVATE_KEY_MODE)
    return HostClient(files, token)


def status_name(payment: payments_pb2.Payment) -> str:
    return payments_pb2.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")


async def _retrying(call: Callable[[], Any], deadline: float, retries: Counter[str]) -> Any:
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRYABLE or time.monotonic() > deadline:
                raise
            retries[error.code().name] += 1
            await asyncio.sleep(POLL_INTERVAL_S)


async def purchase(
    stub: payments_pb2_grpc.PaymentServiceStub,
    payer: str,
    merchant: str,
    sku: str,
    quantity: int,
    retries: Counter[str] | None = None,
) -> payments_pb2.Payment:
    """Create a purchase (the same idempotency key on every retry) and poll until it ends; calls
    retried after a transient failure are counted in retries, by status."""
    retries = Counter() if retries is None else retries
    deadline = time.monotonic() + PAYMENT_END_TIMEOUT_S
    request = payments_pb2.CreatePaymentRequest(
        idempotency_key=str(uuid.uuid4()),
        payer_account_id=payer,
        merchant_account_id=merchant,
        sku=sku,
        quantity=quantity,
        amount=Money(amount_minor=PRICE_MINOR * quantity, currency=CURRENCY),
    )
    created = await _retrying(lambda: stub.CreatePayment(request, timeout=CALL_TIMEOUT_S), deadline, retries)
    payment_id = created.payment.payment_id
    while True:
        payment: payments_pb2.Payment = await _retrying(
            lambda: stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=payment_id), timeout=CALL_TIMEOUT_S),
            deadline,
            retries,
        )
        if status_name(payment) in TERMINAL:
            return payment
        expect(
            time.monotonic() < deadline,
            f"payment {payment_id} still {status_name(payment)} after {PAYMENT_END_TIMEOUT_S:.0f} s",
        )
        await asyncio.sleep(POLL_INTERVAL_S)


# -- accounts and stock, through ops ---------------------------------------------------------------


@dataclass(frozen=True)
class Shop:
    """What the ops client set up: funded wallets, a merchant, an item in stock, one out of stock."""

    wallets: tuple[str, ...]
    deposit_minor: int
    merchant: str
    sku: str
    received: int
    scarce_sku: str


def open_shop(project: ComposeProject, wallets: int, deposit_minor: int, stock: int) -> Shop:
    run_id = uuid.uuid4().hex[:8]
    shop = Shop(
        tuple(str(uuid.uuid4()) for _ in range(wallets)),
        deposit_minor,
        str(uuid.uuid4()),
        f"mug-{run_id}",
        stock,
        f"scarce-{run_id}",
    )
    commands = [
        ["account", "open", "--id", shop.merchant, "--kind", "merchant", "--currency", CURRENCY, "--owner", "Mug shop"]
    ]
    for index, wallet in enumerate(shop.wallets):
        commands += [
            [
                "account",
                "open",
                "--id",
                wallet,
                "--kind",
                "wallet",
                "--currency",
                CURRENCY,
                "--owner",
                f"Payer {index}",
            ],
            ["account", "deposit", wallet, str(deposit_minor), CURRENCY],
        ]
    for sku in (shop.sku, shop.scarce_sku):
        commands.append(["item", "add", sku, "--name", "Mug", "--price", str(PRICE_MINOR), "--currency", CURRENCY])
    commands.append(["item", "receive", shop.sku, str(stock)])
    project.ops(commands)
    return shop


class Ops(Protocol):
    def ops(self, commands: Sequence[Sequence[str]]) -> list[dict[str, Any]]: ...


def _int(record: dict[str, Any], key: str) -> int:
    return int(record.get(key, 0))  # proto JSON leaves zeros out and writes int64 as strings


def check_books(project: Ops, shop: Shop, payments: Iterable[payments_pb2.Payment]) -> str:
    """Money and stock agree with the payments' outcomes, exactly; nothing is left held or reserved."""
    ended = list(payments)
    expect(all(status_name(p) in TERMINAL for p in ended), "a payment has not ended")
    completed = [p for p in ended if status_name(p) == "COMPLETED"]
    accounts = [*shop.wallets, shop.merchant]
    records = project.ops(
        [
            *(["account", "balance", account] for account in accounts),
            ["item", "get", shop.sku],
            ["item", "get", shop.scarce_sku],
        ]
    )
    balances = {record["account_id"]: record for record in records[: len(accounts)]}
    item, scarce = records[len(accounts) :]
    for wallet in shop.wallets:
        spent = sum(p.amount.amount_minor for p in completed if p.payer_account_id == wallet)
        balance = balances[wallet]
        expect(
            _int(balance, "balance_minor") == shop.deposit_minor - spent and _int(balance, "held_minor") == 0,
            f"wallet {wallet}: expected balance {shop.deposit_minor - spent} and nothing held, got {balance}",
        )
    earned = sum(p.amount.amount_minor for p in completed)
    merchant = balances[shop.merchant]
    expect(
        _int(merchant, "balance_minor") == earned and _int(merchant, "held_minor") == 0,
        f"merchant: expected balance {earned}, got {merchant}",
    )
    total = sum(_int(balances[account], "balance_minor") for account in accounts)
    expect(total == shop.deposit_minor * len(shop.wallets), f"money not conserved: {total} in all accounts")
    sold = sum(p.quantity for p in completed)
    expect(
        (_int(item, "quantity_available"), _int(item, "quantity_reserved"), _int(item, "quantity_sold"))
        == (shop.received - sold, 0, sold)
        and _int(item, "quantity_received") == shop.received,
        f"{shop.sku}: expected {shop.received - sold} available, 0 reserved, {sold} sold, got {item}",
    )
    expect(
        (_int(scarce, "quantity_available"), _int(scarce, "quantity_reserved"), _int(scarce, "quantity_sold"))
        == (0, 0, 0),
        f"{shop.scarce_sku}: expected no stock moved, got {scarce}",
    )
    outcomes = Counter(status_name(p) for p in ended)
    return (
        f"{len(ended)} payments ({', '.join(f'{count} {name}' for name, count in sorted(outcomes.items()))}); "
        f"{len(accounts)} accounts hold {total} = the deposits, none held; {shop.sku}: "
        f"{shop.received - sold} available + {sold} sold = {shop.received} received, none reserved"
    )


# -- the scenarios -------------------------------------------------------------------------------


async def completed_and_compensated(
    target: str, client: HostClient, shop: Shop, say: Say
) -> list[payments_pb2.Payment]:
    """One purchase that completes, and one the ledger holds funds for and inventory then refuses
    (nothing in stock), so the hold is released: the compensation."""
    async with tls.secure_channel(target, client.files, client.token) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        wallet = shop.wallets[0]
        completed = await purchase(stub, wallet, shop.merchant, shop.sku, 1)
        expect(status_name(completed) == "COMPLETED", f"expected COMPLETED, got {completed}")
        say(f"payment {completed.payment_id}: COMPLETED")
        failed = await purchase(stub, wallet, shop.merchant, shop.scarce_sku, 1)
        expect(
            status_name(failed) == "FAILED" and "out of stock" in failed.reason,
            f"expected FAILED (out of stock), got {failed}",
        )
        say(f"payment {failed.payment_id}: FAILED ({failed.reason}); its hold was released")
    return [completed, failed]


async def purchases_through_kills(
    project: ComposeProject, target: str, client: HostClient, shop: Shop, say: Say
) -> list[payments_pb2.Payment]:
    """CHAOS_PURCHASES purchases from the host while one replica of every service is killed."""
    killed = asyncio.Event()
    started = 0
    retries: Counter[str] = Counter()

    async def one(
        index: int, stub: payments_pb2_grpc.PaymentServiceStub, gate: asyncio.Semaphore
    ) -> payments_pb2.Payment:
        nonlocal started
        async with gate:
            started += 1
            if started == CHAOS_CONCURRENCY * 2 and not killed.is_set():
                killed.set()
                await asyncio.to_thread(kill_one_replica_each, project, say)
            wallet = shop.wallets[index % len(shop.wallets)]
            return await purchase(stub, wallet, shop.merchant, shop.sku, 1, retries)

    async with tls.secure_channel(target, client.files, client.token) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        gate = asyncio.Semaphore(CHAOS_CONCURRENCY)
        ended = await asyncio.gather(*(one(index, stub, gate) for index in range(CHAOS_PURCHASES)))
    expect(killed.is_set(), "no replica was killed")
    say(f"all {len(ended)} purchases ended: {dict(Counter(status_name(p) for p in ended))}")
    say(f"calls sent again after a transient failure: {dict(retries) or 'none'}")
    return list(ended)


def kill_one_replica_each(project: ComposeProject, say: Say) -> None:
    for service in SERVICES:
        replicas = project.containers(service)
        expect(len(replicas) >= 2, f"{service} has {len(replicas)} running replicas, expected 2")
        project.kill(replicas[0])
        say(f"killed one of {len(replicas)} {service} replicas ({replicas[0][:12]})")


# -- what is reachable -------------------------------------------------------------------------------


def listening_sockets() -> set[tuple[str, int]]:
    """The host's listening TCP sockets (IPv4 and IPv6), as (address, port), from /proc/net."""
    found = set()
    for path in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                found.add((_address(address), int(port, 16)))
    return found


def _address(hex_address: str) -> str:
    """/proc/net writes addresses as little-endian 32-bit words in hex: 0100007F is 127.0.0.1."""
    raw = bytes.fromhex(hex_address)
    ordered = b"".join(raw[index : index + 4][::-1] for index in range(0, len(raw), 4))
    return str(ipaddress.ip_address(ordered))


def check_exposure(project: ComposeProject, port: int, before: set[tuple[str, int]]) -> str:
    """Only the entry service publishes a port, only on 127.0.0.1, and the cluster opened no other
    listening socket on the host outside loopback."""
    published = project.published_ports()
    entry = project.topology.entry
    expect(
        published == [(entry, "127.0.0.1", str(port))],
        f"expected only {entry} on 127.0.0.1:{port} to be published, got {published}",
    )
    new = listening_sockets() - before
    outside = sorted(socket for socket in new if not socket[0].startswith("127.") and socket[0] != "::1")
    expect(not outside, f"the cluster listens on the host outside loopback: {outside}")
    expect(("127.0.0.1", port) in new, f"nothing listens on 127.0.0.1:{port}")
    return f"only {entry} is published, on 127.0.0.1:{port}; no other listener on the host"


def check_nats_refuses_strangers(project: ComposeProject) -> str:
    """Inside the private network: NATS refuses plaintext and TLS without a client certificate,
    and accepts the ops client's certificate (so the probe itself can succeed)."""
    output = project.one_off("ops", "-", entrypoint="python", input_text=NATS_PROBE.read_text())
    results = json.loads(output.strip().splitlines()[-1])
    expect(results["tls_with_ops_certificate"] == "connected", f"the ops client could not reach NATS: {results}")
    for way in ("plaintext", "tls_without_certificate"):
        expect(results[way].startswith("refused"), f"NATS accepted a client by {way}: {results}")
    return f"NATS: plaintext {results['plaintext']}; TLS without a certificate {results['tls_without_certificate']}"
