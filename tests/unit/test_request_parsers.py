"""What every RPC refuses before it touches anything: the request parsers, one case per rule.

Each parser turns a request into checked values or raises InvalidArgument with the message the
client sees (the gRPC layer maps it to INVALID_ARGUMENT; tests/e2e/test_bad_input.py shows that
end to end for a few of these). Refusals that need the database (unknown ids, conflicting
retries) are tested on the handlers, in tests/integration/test_handlers.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import validation
from paysaga.core.access import Caller
from paysaga.core.errors import InvalidArgument, PermissionDenied
from paysaga.core.identity import client_identity
from paysaga.inventory.v1 import inventory_pb2
from paysaga.ledger.v1 import ledger_pb2
from paysaga.payments.v1 import payments_pb2
from services.inventory.adapters import grpc_api as inventory_api
from services.ledger.adapters import grpc_api as ledger_api
from services.payments.adapters import grpc_api as payments_api
from services.payments.domain import Status

PAYER = str(uuid.uuid4())
MERCHANT = str(uuid.uuid4())
SKU_RULE = "sku must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', got "


def purchase(**changes: Any) -> payments_pb2.CreatePaymentRequest:
    fields: dict[str, Any] = {
        "idempotency_key": "key-1",
        "payer_account_id": PAYER,
        "merchant_account_id": MERCHANT,
        "sku": "mug",
        "quantity": 1,
        "amount": Money(amount_minor=100, currency="EUR"),
    }
    return payments_pb2.CreatePaymentRequest(**{**fields, **changes})


def account(**changes: Any) -> ledger_pb2.OpenAccountRequest:
    fields: dict[str, Any] = {
        "account_id": PAYER,
        "kind": ledger_pb2.ACCOUNT_KIND_WALLET,
        "currency": "EUR",
        "owner": "ada",
    }
    return ledger_pb2.OpenAccountRequest(**{**fields, **changes})


def deposit(**changes: Any) -> ledger_pb2.DepositRequest:
    fields: dict[str, Any] = {
        "account_id": PAYER,
        "amount": Money(amount_minor=10, currency="EUR"),
        "deposit_id": str(uuid.uuid4()),
    }
    return ledger_pb2.DepositRequest(**{**fields, **changes})


def item(**changes: Any) -> inventory_pb2.AddItemRequest:
    fields: dict[str, Any] = {"sku": "mug", "name": "Mug", "unit_price": Money(amount_minor=1, currency="EUR")}
    return inventory_pb2.AddItemRequest(**{**fields, **changes})


def receipt(**changes: Any) -> inventory_pb2.ReceiveStockRequest:
    fields: dict[str, Any] = {"sku": "mug", "quantity": 1, "receipt_id": str(uuid.uuid4())}
    return inventory_pb2.ReceiveStockRequest(**{**fields, **changes})


CLIENT = Caller(client_identity("acme-shop"), frozenset({"ledger:write", "inventory:write"}))
OPS = Caller(client_identity("ops"), frozenset({"ledger:admin", "inventory:admin"}))


def open_account(request: ledger_pb2.OpenAccountRequest) -> object:
    return ledger_api.new_account(request, CLIENT)


def add_item(request: inventory_pb2.AddItemRequest) -> object:
    return inventory_api.new_item(request, CLIENT)


# (parser, request, the message the client gets)
CASES: list[tuple[Callable[[Any], object], Any, str]] = [
    # CreatePayment
    (
        payments_api.purchase_request,
        purchase(amount=Money(amount_minor=0, currency="EUR")),
        "amount.amount_minor must be positive, got 0",
    ),
    (
        payments_api.purchase_request,
        purchase(amount=Money(amount_minor=-5, currency="EUR")),
        "amount.amount_minor must be positive, got -5",
    ),
    (
        payments_api.purchase_request,
        purchase(amount=Money(amount_minor=2**62, currency="EUR")),
        f"amount.amount_minor must be at most {10**15}, got {2**62}",
    ),
    (
        payments_api.purchase_request,
        purchase(amount=Money(amount_minor=100, currency="XYZ")),
        "amount.currency must be an ISO 4217 code such as EUR, got 'XYZ'",
    ),
    (
        payments_api.purchase_request,
        purchase(amount=Money(amount_minor=100, currency="eur")),
        "amount.currency must be an ISO 4217 code such as EUR, got 'eur'",
    ),
    (payments_api.purchase_request, purchase(idempotency_key=""), "idempotency_key is required"),
    (
        payments_api.purchase_request,
        purchase(idempotency_key="k" * 129),
        "idempotency_key must be at most 128 characters, got 129",
    ),
    (payments_api.purchase_request, purchase(payer_account_id=""), "payer_account_id is required"),
    (
        payments_api.purchase_request,
        purchase(merchant_account_id="shop"),
        "merchant_account_id must be a UUID, got 'shop'",
    ),
    (
        payments_api.purchase_request,
        purchase(merchant_account_id=PAYER),
        "payer_account_id and merchant_account_id must differ",
    ),
    (payments_api.purchase_request, purchase(sku=""), SKU_RULE + "''"),
    (payments_api.purchase_request, purchase(sku="x" * 65), SKU_RULE + repr("x" * 65)),
    (payments_api.purchase_request, purchase(quantity=0), "quantity must be between 1 and 1000000, got 0"),
    (
        payments_api.purchase_request,
        purchase(quantity=1_000_001),
        "quantity must be between 1 and 1000000, got 1000001",
    ),
    (payments_api.purchase_request, purchase(sla_tier=42), "sla_tier 42 is not a known tier"),
    # GetPayment, WatchPayment, CancelPayment, RefundPayment
    (payments_api.payment_id_of, payments_pb2.GetPaymentRequest(payment_id=""), "payment_id is required"),
    (
        payments_api.payment_id_of,
        payments_pb2.WatchPaymentRequest(payment_id="x"),
        "payment_id must be a UUID, got 'x'",
    ),
    (
        payments_api.reason_of,
        payments_pb2.CancelPaymentRequest(payment_id=PAYER, reason="r" * 201),
        "reason must be at most 200 characters, got 201",
    ),
    (
        payments_api.reason_of,
        payments_pb2.RefundPaymentRequest(payment_id=PAYER, reason="r" * 201),
        "reason must be at most 200 characters, got 201",
    ),
    # ListPayments
    (
        payments_api.list_query,
        payments_pb2.ListPaymentsRequest(page_size=501),
        "page_size must be between 0 and 500, got 501",
    ),
    (
        payments_api.list_query,
        payments_pb2.ListPaymentsRequest(page_token="abc"),
        "page_token is not one this service issued",
    ),
    (
        payments_api.list_query,
        payments_pb2.ListPaymentsRequest(page_token="9" * 19),
        "page_token is not one this service issued",
    ),
    (
        payments_api.list_query,
        payments_pb2.ListPaymentsRequest(status=99),  # type: ignore[arg-type]
        "status 99 is not a known payment status",
    ),
    (
        payments_api.list_query,
        payments_pb2.ListPaymentsRequest(payer_account_id="me"),
        "payer_account_id must be a UUID, got 'me'",
    ),
    (
        payments_api.list_query,
        payments_pb2.ListPaymentsRequest(merchant_account_id="shop"),
        "merchant_account_id must be a UUID, got 'shop'",
    ),
    (
        payments_api.list_query,
        payments_pb2.ListPaymentsRequest(page_token="\u00b2"),
        "page_token is not one this service issued",
    ),
    # OpenAccount
    (open_account, account(kind=0), "kind must be ACCOUNT_KIND_WALLET or ACCOUNT_KIND_MERCHANT"),
    (open_account, account(currency="EURO"), "currency must be an ISO 4217 code such as EUR, got 'EURO'"),
    (open_account, account(owner=" "), "owner is required"),
    (open_account, account(owner="o" * 201), "owner must be at most 200 characters, got 201"),
    (open_account, account(account_id=""), "account_id is required"),
    (
        open_account,
        account(owner_client="Not A Name"),
        "owner_client: invalid name 'Not A Name': use 1 to 63 characters of a-z, 0-9 and '-', "
        "starting and ending with a letter or digit",
    ),
    # Deposit
    (
        ledger_api.deposit_of,
        deposit(amount=Money(amount_minor=0, currency="EUR")),
        "amount.amount_minor must be positive, got 0",
    ),
    (
        ledger_api.deposit_of,
        deposit(amount=Money(amount_minor=10, currency="")),
        "amount.currency must be an ISO 4217 code such as EUR, got ''",
    ),
    (ledger_api.deposit_of, deposit(deposit_id=""), "deposit_id is required"),
    (ledger_api.deposit_of, deposit(account_id="acc"), "account_id must be a UUID, got 'acc'"),
    (
        ledger_api.deposit_of,
        deposit(deposit_id="", amount=Money(amount_minor=0, currency="EUR")),
        "deposit_id is required",
    ),
    # GetBalance, GetStatement
    (ledger_api.account_id_of, ledger_pb2.GetBalanceRequest(account_id="x"), "account_id must be a UUID, got 'x'"),
    (
        ledger_api.statement_query,
        ledger_pb2.GetStatementRequest(account_id=PAYER, page_size=-1),
        "page_size must be between 0 and 500, got -1",
    ),
    # AddItem
    (add_item, item(sku="bad sku"), SKU_RULE + "'bad sku'"),
    (add_item, item(name=""), "name is required"),
    (add_item, item(name="x" * 201), "name must be at most 200 characters, got 201"),
    (
        add_item,
        item(unit_price=Money(amount_minor=0, currency="EUR")),
        "unit_price.amount_minor must be positive, got 0",
    ),
    (
        add_item,
        item(unit_price=Money(amount_minor=1, currency="QQQ")),
        "unit_price.currency must be an ISO 4217 code such as EUR, got 'QQQ'",
    ),
    # ReceiveStock, GetItem, ListItems
    (inventory_api.receipt_of, receipt(quantity=0), "quantity must be between 1 and 1000000, got 0"),
    (inventory_api.receipt_of, receipt(receipt_id="r1"), "receipt_id must be a UUID, got 'r1'"),
    (inventory_api.receipt_of, receipt(sku="a/b"), SKU_RULE + "'a/b'"),
    (
        inventory_api.items_query,
        inventory_pb2.ListItemsRequest(page_token="-1"),
        "page_token is not one this service issued",
    ),
]


@pytest.mark.parametrize(
    ("parse", "request_message", "message"),
    CASES,
    ids=[f"{case[0].__name__}-{index}" for index, case in enumerate(CASES)],
)
def test_a_bad_request_is_refused_with_a_message_that_names_the_field(
    parse: Callable[[Any], object], request_message: Any, message: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse(request_message)
    assert str(refused.value) == message


def test_a_good_purchase_is_parsed_with_the_defaults_filled_in() -> None:
    parsed = payments_api.purchase_request(purchase(payer_account_id=PAYER.upper()))
    # A UUID in any spelling is one account; an unset tier is the standard one.
    assert (parsed.payer_account_id, parsed.sla_tier) == (PAYER, payments_pb2.SLA_TIER_STANDARD)
    assert (parsed.amount_minor, parsed.currency, parsed.quantity, parsed.sku) == (100, "EUR", 1, "mug")


def test_a_list_query_without_a_page_size_gets_the_default_page_and_its_filters() -> None:
    query = payments_api.list_query(
        payments_pb2.ListPaymentsRequest(
            payer_account_id=PAYER,
            page_token="41",
            status=payments_pb2.PAYMENT_STATUS_REFUNDING,
        )
    )
    assert query == payments_api.ListQuery(
        validation.PageRequest(validation.DEFAULT_PAGE_SIZE, 41), PAYER, "", Status.REFUNDING
    )


def test_parsed_admin_requests_carry_exactly_what_was_asked() -> None:
    deposit_id = str(uuid.uuid4())
    assert ledger_api.deposit_of(deposit(deposit_id=deposit_id)) == ledger_api.DepositOrder(
        PAYER, 10, "EUR", deposit_id
    )
    assert inventory_api.new_item(item(), CLIENT).sku == "mug"
    merchant = ledger_api.new_account(account(account_id=MERCHANT, kind=ledger_pb2.ACCOUNT_KIND_MERCHANT), CLIENT)
    assert (merchant.account_id, merchant.kind.value, merchant.currency) == (MERCHANT, "MERCHANT", "EUR")


def test_what_a_client_creates_is_its_own_and_only_ops_create_for_another_client() -> None:
    assert ledger_api.new_account(account(), CLIENT).owner_client == CLIENT.identity
    assert inventory_api.new_item(item(owner_client=CLIENT.identity), CLIENT).owner_client == CLIENT.identity
    # Ops name the client, by name or by identity.
    assert ledger_api.new_account(account(owner_client="alice"), OPS).owner_client == client_identity("alice")
    assert inventory_api.new_item(item(owner_client=client_identity("bob")), OPS).owner_client == client_identity("bob")
    with pytest.raises(PermissionDenied) as refused:
        ledger_api.new_account(account(owner_client="alice"), CLIENT)
    assert str(refused.value) == "only ops (ledger:admin) may create records for another client"
    with pytest.raises(PermissionDenied):
        inventory_api.new_item(item(owner_client="alice"), CLIENT)
