"""Bad input through the whole cluster: the right status code, a readable message, and nothing
changed, for one case of each kind (a refused field on each service, on a unary and a streaming
call; an unknown id; a conflicting retry; a broken precondition).

Every rule, one case each, is tested on the request parsers (tests/unit/test_request_parsers.py)
and on the handlers over both databases (tests/integration/test_handlers.py); here the point is
that a refusal reaches the client as the right status and leaves balances, stock and payments as
they were."""

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
        "GetPayment",
        lambda p: payments_pb2.GetPaymentRequest(payment_id=UNKNOWN_ID),
        NOT_FOUND,
        f"payment {UNKNOWN_ID} does not exist",
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
        "OpenAccount",
        lambda p: ledger_pb2.OpenAccountRequest(
            account_id=p.payer, kind=ledger_pb2.ACCOUNT_KIND_WALLET, currency="EUR", owner="x"
        ),
        EXISTS,
        "account {payer} already exists, with other details",
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
        "GetStatement",
        lambda p: ledger_pb2.GetStatementRequest(account_id=p.payer, page_size=-1),
        INVALID,
        "page_size must be between 0 and 500, got -1",
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
        "ReceiveStock",
        lambda p: inventory_pb2.ReceiveStockRequest(sku="nothing-here", quantity=1, receipt_id=str(uuid.uuid4())),
        NOT_FOUND,
        "SKU nothing-here does not exist",
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
