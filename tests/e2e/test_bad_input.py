"""Bad input to every RPC: the right status code, a readable message, and nothing changed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from paysaga.common.v1.money_pb2 import Money
from paysaga.inventory.v1 import inventory_pb2
from paysaga.ledger.v1 import ledger_pb2
from paysaga.payments.v1 import payments_pb2
from tests.e2e.shop import Purchase, Shop

pytestmark = pytest.mark.e2e
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
UNKNOWN_ID = "9b2f4c1e-0d7a-4e3b-8c5f-6a1d2e3f4b5c"


def payment(p: Purchase, **changes: Any) -> payments_pb2.CreatePaymentRequest:
    fields: dict[str, Any] = {
        "idempotency_key": str(uuid.uuid4()),
        "payer_account_id": p.payer,
        "merchant_account_id": p.merchant,
        "sku": p.sku,
        "quantity": 1,
        "amount": Money(amount_minor=100, currency="EUR"),
    }
    return payments_pb2.CreatePaymentRequest(**{**fields, **changes})


# (RPC, request built from the test's purchase, expected status, expected message; {payer} and
# {sku} in a message stand for the test's own ids)
CASES: list[tuple[str, Callable[[Purchase], Any], grpc.StatusCode, str]] = [
    (
        "CreatePayment",
        lambda p: payment(p, amount=Money(amount_minor=0, currency="EUR")),
        INVALID,
        "amount.amount_minor must be positive, got 0",
    ),
    (
        "CreatePayment",
        lambda p: payment(p, amount=Money(amount_minor=-5, currency="EUR")),
        INVALID,
        "amount.amount_minor must be positive, got -5",
    ),
    (
        "CreatePayment",
        lambda p: payment(p, amount=Money(amount_minor=2**62, currency="EUR")),
        INVALID,
        f"amount.amount_minor must be at most {10**15}, got {2**62}",
    ),
    (
        "CreatePayment",
        lambda p: payment(p, amount=Money(amount_minor=100, currency="XYZ")),
        INVALID,
        "amount.currency must be an ISO 4217 code such as EUR, got 'XYZ'",
    ),
    (
        "CreatePayment",
        lambda p: payment(p, amount=Money(amount_minor=100, currency="eur")),
        INVALID,
        "amount.currency must be an ISO 4217 code such as EUR, got 'eur'",
    ),
    ("CreatePayment", lambda p: payment(p, idempotency_key=""), INVALID, "idempotency_key is required"),
    (
        "CreatePayment",
        lambda p: payment(p, idempotency_key="k" * 129),
        INVALID,
        "idempotency_key must be at most 128 characters, got 129",
    ),
    ("CreatePayment", lambda p: payment(p, payer_account_id=""), INVALID, "payer_account_id is required"),
    (
        "CreatePayment",
        lambda p: payment(p, merchant_account_id="shop"),
        INVALID,
        "merchant_account_id must be a UUID, got 'shop'",
    ),
    (
        "CreatePayment",
        lambda p: payment(p, merchant_account_id=p.payer),
        INVALID,
        "payer_account_id and merchant_account_id must differ",
    ),
    (
        "CreatePayment",
        lambda p: payment(p, sku=""),
        INVALID,
        "sku must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', got ''",
    ),
    (
        "CreatePayment",
        lambda p: payment(p, sku="x" * 65),
        INVALID,
        "sku must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', got '" + "x" * 65 + "'",
    ),
    ("CreatePayment", lambda p: payment(p, quantity=0), INVALID, "quantity must be between 1 and 1000000, got 0"),
    ("CreatePayment", lambda p: payment(p, sla_tier=42), INVALID, "sla_tier 42 is not a known tier"),
    ("GetPayment", lambda p: payments_pb2.GetPaymentRequest(payment_id=""), INVALID, "payment_id is required"),
    (
        "GetPayment",
        lambda p: payments_pb2.GetPaymentRequest(payment_id=UNKNOWN_ID),
        NOT_FOUND,
        f"payment {UNKNOWN_ID} does not exist",
    ),
    (
        "ListPayments",
        lambda p: payments_pb2.ListPaymentsRequest(page_size=501),
        INVALID,
        "page_size must be between 0 and 500, got 501",
    ),
    (
        "ListPayments",
        lambda p: payments_pb2.ListPaymentsRequest(page_token="abc"),  # noqa: S106
        INVALID,
        "page_token is not one this service issued",
    ),
    (
        "ListPayments",
        lambda p: payments_pb2.ListPaymentsRequest(status=99),  # type: ignore[arg-type]
        INVALID,
        "status 99 is not a known payment status",
    ),
    (
        "ListPayments",
        lambda p: payments_pb2.ListPaymentsRequest(payer_account_id="me"),
        INVALID,
        "payer_account_id must be a UUID, got 'me'",
    ),
    (
        "WatchPayment",
        lambda p: payments_pb2.WatchPaymentRequest(payment_id=UNKNOWN_ID),
        NOT_FOUND,
        f"payment {UNKNOWN_ID} does not exist",
    ),
    (
        "WatchPayment",
        lambda p: payments_pb2.WatchPaymentRequest(payment_id="x"),
        INVALID,
        "payment_id must be a UUID, got 'x'",
    ),
    (
        "CancelPayment",
        lambda p: payments_pb2.CancelPaymentRequest(payment_id=UNKNOWN_ID),
        NOT_FOUND,
        f"payment {UNKNOWN_ID} does not exist",
    ),
    (
        "CancelPayment",
        lambda p: payments_pb2.CancelPaymentRequest(payment_id=UNKNOWN_ID, reason="r" * 201),
        INVALID,
        "reason must be at most 200 characters, got 201",
    ),
    (
        "RefundPayment",
        lambda p: payments_pb2.RefundPaymentRequest(payment_id=UNKNOWN_ID),
        NOT_FOUND,
        f"payment {UNKNOWN_ID} does not exist",
    ),
    (
        "OpenAccount",
        lambda p: ledger_pb2.OpenAccountRequest(
            account_id=p.payer, kind=ledger_pb2.ACCOUNT_KIND_WALLET, currency="EUR", owner="x"
        ),
        EXISTS,
        "account {payer} already exists, with other details",
    ),
    (
        "OpenAccount",
        lambda p: ledger_pb2.OpenAccountRequest(account_id=str(uuid.uuid4()), currency="EUR", owner="x"),
        INVALID,
        "kind must be ACCOUNT_KIND_WALLET or ACCOUNT_KIND_MERCHANT",
    ),
    (
        "OpenAccount",
        lambda p: ledger_pb2.OpenAccountRequest(
            account_id=str(uuid.uuid4()), kind=ledger_pb2.ACCOUNT_KIND_WALLET, currency="EURO", owner="x"
        ),
        INVALID,
        "currency must be an ISO 4217 code such as EUR, got 'EURO'",
    ),
    (
        "OpenAccount",
        lambda p: ledger_pb2.OpenAccountRequest(
            account_id=str(uuid.uuid4()), kind=ledger_pb2.ACCOUNT_KIND_WALLET, currency="EUR", owner=" "
        ),
        INVALID,
        "owner is required",
    ),
    (
        "OpenAccount",
        lambda p: ledger_pb2.OpenAccountRequest(
            account_id="", kind=ledger_pb2.ACCOUNT_KIND_WALLET, currency="EUR", owner="x"
        ),
        INVALID,
        "account_id is required",
    ),
    (
        "Deposit",
        lambda p: ledger_pb2.DepositRequest(
            account_id=p.payer, amount=Money(amount_minor=0, currency="EUR"), deposit_id=str(uuid.uuid4())
        ),
        INVALID,
        "amount.amount_minor must be positive, got 0",
    ),
    (
        "Deposit",
        lambda p: ledger_pb2.DepositRequest(
            account_id=p.payer, amount=Money(amount_minor=10, currency="USD"), deposit_id=str(uuid.uuid4())
        ),
        PRECONDITION,
        "account {payer} holds EUR, not USD",
    ),
    (
        "Deposit",
        lambda p: ledger_pb2.DepositRequest(
            account_id=UNKNOWN_ID, amount=Money(amount_minor=10, currency="EUR"), deposit_id=str(uuid.uuid4())
        ),
        NOT_FOUND,
        f"account {UNKNOWN_ID} does not exist",
    ),
    (
        "Deposit",
        lambda p: ledger_pb2.DepositRequest(account_id=p.payer, amount=Money(amount_minor=10, currency="EUR")),
        INVALID,
        "deposit_id is required",
    ),
    (
        "GetBalance",
        lambda p: ledger_pb2.GetBalanceRequest(account_id=UNKNOWN_ID),
        NOT_FOUND,
        f"account {UNKNOWN_ID} does not exist",
    ),
    (
        "GetStatement",
        lambda p: ledger_pb2.GetStatementRequest(account_id=p.payer, page_size=-1),
        INVALID,
        "page_size must be between 0 and 500, got -1",
    ),
    (
        "GetStatement",
        lambda p: ledger_pb2.GetStatementRequest(account_id=UNKNOWN_ID),
        NOT_FOUND,
        f"account {UNKNOWN_ID} does not exist",
    ),
    (
        "AddItem",
        lambda p: inventory_pb2.AddItemRequest(
            sku=p.sku, name="again", unit_price=Money(amount_minor=1, currency="EUR")
        ),
        EXISTS,
        "SKU {sku} already exists, with other details",
    ),
    (
        "AddItem",
        lambda p: inventory_pb2.AddItemRequest(
            sku="bad sku", name="x", unit_price=Money(amount_minor=1, currency="EUR")
        ),
        INVALID,
        "sku must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', got 'bad sku'",
    ),
    (
        "AddItem",
        lambda p: inventory_pb2.AddItemRequest(sku="ok-sku", name="", unit_price=Money(amount_minor=1, currency="EUR")),
        INVALID,
        "name is required",
    ),
    (
        "AddItem",
        lambda p: inventory_pb2.AddItemRequest(
            sku="ok-sku", name="x" * 201, unit_price=Money(amount_minor=1, currency="EUR")
        ),
        INVALID,
        "name must be at most 200 characters, got 201",
    ),
    (
        "AddItem",
        lambda p: inventory_pb2.AddItemRequest(
            sku="ok-sku", name="x", unit_price=Money(amount_minor=0, currency="EUR")
        ),
        INVALID,
        "unit_price.amount_minor must be positive, got 0",
    ),
    (
        "ReceiveStock",
        lambda p: inventory_pb2.ReceiveStockRequest(sku=p.sku, quantity=0, receipt_id=str(uuid.uuid4())),
        INVALID,
        "quantity must be between 1 and 1000000, got 0",
    ),
    (
        "ReceiveStock",
        lambda p: inventory_pb2.ReceiveStockRequest(sku="nothing-here", quantity=1, receipt_id=str(uuid.uuid4())),
        NOT_FOUND,
        "SKU nothing-here does not exist",
    ),
    (
        "ReceiveStock",
        lambda p: inventory_pb2.ReceiveStockRequest(sku=p.sku, quantity=1, receipt_id="r1"),
        INVALID,
        "receipt_id must be a UUID, got 'r1'",
    ),
    (
        "GetItem",
        lambda p: inventory_pb2.GetItemRequest(sku="nothing-here"),
        NOT_FOUND,
        "SKU nothing-here does not exist",
    ),
    (
        "ListItems",
        lambda p: inventory_pb2.ListItemsRequest(page_token="-1"),  # noqa: S106
        INVALID,
        "page_token is not one this service issued",
    ),
]


async def snapshot(shop: Shop, purchase: Purchase) -> tuple[Any, ...]:
    listed = await shop.payments.ListPayments(payments_pb2.ListPaymentsRequest(page_size=500), timeout=10)
    items = await shop.inventory.ListItems(inventory_pb2.ListItemsRequest(page_size=500), timeout=10)
    return (
        await shop.balance(purchase.payer),
        await shop.balance(purchase.merchant),
        await shop.stock(purchase.sku),
        len(listed.payments),
        listed.next_page_token,
        len(items.items),
    )


@pytest.mark.parametrize(
    ("rpc", "build", "code", "message"), CASES, ids=[f"{case[0]}-{index}" for index, case in enumerate(CASES)]
)
async def test_bad_input_is_refused_with_a_clear_status_and_changes_nothing(
    shop: Shop, rpc: str, build: Callable[[Purchase], Any], code: grpc.StatusCode, message: str
) -> None:
    purchase = await shop.setup(funds_minor=1000, stock=2)
    before = await snapshot(shop, purchase)
    request = build(purchase)
    stub = {
        "OpenAccount": shop.ledger,
        "Deposit": shop.ledger,
        "GetBalance": shop.ledger,
        "GetStatement": shop.ledger,
    }.get(rpc, shop.inventory if rpc in ("AddItem", "ReceiveStock", "GetItem", "ListItems") else shop.payments)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        call = getattr(stub, rpc)(request, timeout=10)
        if rpc == "WatchPayment":
            async for _update in call:
                pass
        else:
            await call

    expected = message.format(payer=purchase.payer, sku=purchase.sku)
    assert (refused.value.code(), refused.value.details()) == (code, expected)
    assert await snapshot(shop, purchase) == before
