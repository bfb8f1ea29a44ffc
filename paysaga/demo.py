"""A short tour of a running cluster: fund a wallet, stock an item, one purchase that completes
and one that fails and is compensated. The run command shows it once the cluster is up."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc

from paysaga import tls
from paysaga.common.v1.money_pb2 import Money
from paysaga.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.settings import TlsFiles

PRICE_MINOR = 1250
FUNDS_MINOR = 10_000
CURRENCY = "EUR"
TIMEOUT_S = 10.0


async def run(targets: dict[str, str], client_tls: TlsFiles, token: str, say: Callable[[str], None]) -> None:
    credentials = tls.channel_credentials(client_tls, token)
    async with (
        grpc.aio.secure_channel(targets["ledger"], credentials) as ledger_channel,
        grpc.aio.secure_channel(targets["inventory"], credentials) as inventory_channel,
        grpc.aio.secure_channel(targets["payments"], credentials) as payments_channel,
    ):
        ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        inventory = inventory_pb2_grpc.InventoryServiceStub(inventory_channel)
        payments = payments_pb2_grpc.PaymentServiceStub(payments_channel)

        wallet, merchant = str(uuid.uuid4()), str(uuid.uuid4())
        for account_id, kind, owner in (
            (wallet, ledger_pb2.ACCOUNT_KIND_WALLET, "demo customer"),
            (merchant, ledger_pb2.ACCOUNT_KIND_MERCHANT, "demo shop"),
        ):
            await ledger.OpenAccount(
                ledger_pb2.OpenAccountRequest(account_id=account_id, kind=kind, currency=CURRENCY, owner=owner),
                timeout=TIMEOUT_S,
            )
        await ledger.Deposit(
            ledger_pb2.DepositRequest(
                account_id=wallet,
                amount=Money(amount_minor=FUNDS_MINOR, currency=CURRENCY),
                deposit_id=str(uuid.uuid4()),
            ),
            timeout=TIMEOUT_S,
        )
        sku = f"demo-mug-{uuid.uuid4().hex[:6]}"
        await inventory.AddItem(
            inventory_pb2.AddItemRequest(
                sku=sku, name="Demo mug", unit_price=Money(amount_minor=PRICE_MINOR, currency=CURRENCY)
            ),
            timeout=TIMEOUT_S,
        )
        await inventory.ReceiveStock(
            inventory_pb2.ReceiveStockRequest(sku=sku, quantity=2, receipt_id=str(uuid.uuid4())), timeout=TIMEOUT_S
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
