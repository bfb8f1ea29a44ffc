"""A short tour of a running cluster: fund a wallet, stock an item, one purchase that completes
and one that fails and is compensated. The run command shows it once the cluster is up."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from paysaga.common.v1.money_pb2 import Money
from paysaga.inventory.v1 import inventory_pb2
from paysaga.ledger.v1 import ledger_pb2
from paysaga.ops.client.clients import ServiceClients
from paysaga.payments.v1 import payments_pb2
from paysaga.runtime.settings import TlsFiles

PRICE_MINOR = 1250
FUNDS_MINOR = 10_000
CURRENCY = "EUR"
TIMEOUT_S = 10.0


async def run(targets: dict[str, str], client_tls: TlsFiles, token: str, say: Callable[[str], None]) -> None:
    clients = ServiceClients(targets, client_tls, token)
    try:
        await _tour(clients, say)
    finally:
        await clients.close()


async def _tour(clients: ServiceClients, say: Callable[[str], None]) -> None:
    ledger, inventory, payments = clients.ledger, clients.inventory, clients.payments
    wallet = await clients.open_account(
        ledger_pb2.ACCOUNT_KIND_WALLET,
        currency=CURRENCY,
        owner="demo customer",
        funds_minor=FUNDS_MINOR,
        timeout_s=TIMEOUT_S,
    )
    merchant = await clients.open_account(
        ledger_pb2.ACCOUNT_KIND_MERCHANT, currency=CURRENCY, owner="demo shop", timeout_s=TIMEOUT_S
    )
    sku = f"demo-mug-{uuid.uuid4().hex[:6]}"
    await clients.add_item(
        sku, name="Demo mug", price_minor=PRICE_MINOR, currency=CURRENCY, stock=2, timeout_s=TIMEOUT_S
    )
    say(f"wallet {wallet} funded with {FUNDS_MINOR} {CURRENCY} (minor units); merchant {merchant}")
    say(f"item {sku} stocked with 2")

    for quantity, expectation in (
        (1, "completes"),
        (5, "fails: more than is in stock, so the ledger releases the hold"),
    ):
        say(f"purchase of {quantity} x {sku} ({expectation}):")
        created = await payments.CreatePayment(
            payments_pb2.CreatePaymentRequest(
                idempotency_key=str(uuid.uuid4()),
                payer_account_id=wallet,
                merchant_account_id=merchant,
                sku=sku,
                quantity=quantity,
                amount=Money(amount_minor=PRICE_MINOR * quantity, currency=CURRENCY),
            ),
            timeout=TIMEOUT_S,
        )
        statuses = []
        async for update in payments.WatchPayment(
            payments_pb2.WatchPaymentRequest(payment_id=created.payment.payment_id), timeout=30
        ):
            statuses.append(payments_pb2.PaymentStatus.Name(update.payment.status).removeprefix("PAYMENT_STATUS_"))
            reason = update.payment.reason
        say(
            f"  payment {created.payment.payment_id}: {' -> '.join(dict.fromkeys(statuses))}"
            + (f" ({reason})" if reason else "")
        )

    balance = await ledger.GetBalance(ledger_pb2.GetBalanceRequest(account_id=wallet), timeout=TIMEOUT_S)
    item = await inventory.GetItem(inventory_pb2.GetItemRequest(sku=sku), timeout=TIMEOUT_S)
    say(
        f"wallet: balance {balance.balance_minor}, held {balance.held_minor}, available {balance.available_minor}; "
        f"{sku}: available {item.quantity_available}, reserved {item.quantity_reserved}, sold {item.quantity_sold}"
    )
    say(
        f"try it: .venv/bin/paysaga pay --payer {wallet} --merchant {merchant} --sku {sku} "
        f"--amount {PRICE_MINOR} --currency {CURRENCY} --wait"
    )
