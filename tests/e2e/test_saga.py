"""The purchase saga through the public API, one test per branch: the payment's final status and
reason, both balances and holds, stock levels, and the saga's events in order."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import grpc
import pytest

from paysaga.common.v1.money_pb2 import Money
from paysaga.inventory.v1 import inventory_pb2
from paysaga.ledger.v1 import ledger_pb2
from paysaga.payments.v1 import payments_pb2
from services.payments.admission import REFRESH_S
from services.payments.domain import PaymentLimits, admission_limits
from tests.e2e.conftest import MAX_AMOUNT_MINOR, MAX_IN_FLIGHT, SAGA_TIMEOUT_S, VELOCITY_LIMIT
from tests.e2e.shop import Purchase, Shop, retry_while, status_name

pytestmark = pytest.mark.e2e
PRICE = 1250


async def settled(shop: Shop, timeout_s: float = 30.0) -> None:
    """Wait until the cluster is quiet (every committed event published, every event handled) and
    check the invariants then, compensations included; fail with what is still wrong."""
    deadline = time.monotonic() + timeout_s
    while True:
        unpublished = await shop.unpublished_events()
        busy = await shop.busy_consumers()
        if (unpublished == 0 and not busy) or time.monotonic() > deadline:
            assert unpublished == 0, f"{unpublished} events still in the outboxes"
            assert not busy, f"consumers still busy: {busy}"
            break
        await asyncio.sleep(0.1)
    report = await shop.invariants()
    assert report.ok, "\n".join(report.violations)
    assert await shop.dead_letters() == {}, "an event was parked"


async def test_purchase_completes_and_moves_money_and_stock(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)

    created = await shop.pay(purchase, amount_minor=PRICE)
    payment = await shop.finish(created.payment_id)

    assert (status_name(payment), payment.reason) == ("COMPLETED", "")
    assert await shop.balance(purchase.payer) == (5000 - PRICE, 0, 5000 - PRICE)
    assert await shop.balance(purchase.merchant) == (PRICE, 0, PRICE)
    await settled(shop)
    assert await shop.stock(purchase.sku) == (2, 0, 1)
    events = await shop.saga_events(payment.payment_id)
    types = [event.event_type for event in events]
    assert types[:4] == ["PaymentRequested", "FundsHeld", "StockReserved", "FundsCaptured"]
    assert sorted(types[4:]) == ["PaymentCompleted", "StockCommitted"]
    for cause, effect in itertools.pairwise(events[:4]):
        assert effect.causation_id == cause.event_id, f"{effect.event_type} was not caused by {cause.event_type}"
    assert {event.producer for event in events} == {"payments", "ledger", "inventory"}


async def test_watch_streams_every_status_change_until_the_end(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    created = await shop.pay(purchase, amount_minor=PRICE)

    updates = [
        update.payment
        async for update in shop.payments.WatchPayment(
            payments_pb2.WatchPaymentRequest(payment_id=created.payment_id), timeout=30
        )
    ]

    # Every change, in order: versions count up from 1 without a gap. FundsHeld, StockReserved and
    # FundsCaptured come on different streams, so an intermediate status can be overtaken and skipped.
    statuses = [status_name(payment) for payment in updates]
    assert [payment.version for payment in updates] == list(range(1, len(updates) + 1))
    assert statuses[0] == "PENDING" and statuses[-1] == "COMPLETED"
    progression = ["PENDING", "FUNDS_HELD", "STOCK_RESERVED", "COMPLETED"]
    assert statuses == sorted(set(statuses), key=progression.index)
    assert updates[-1].version == (await shop.payment(created.payment_id)).version


async def test_insufficient_funds_fails_without_touching_money_or_stock(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=1000, stock=3)

    payment = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)

    assert status_name(payment) == "FAILED"
    assert payment.reason == f"insufficient funds: available 1000, needed {PRICE}"
    assert await shop.balance(purchase.payer) == (1000, 0, 1000)
    assert await shop.balance(purchase.merchant) == (0, 0, 0)
    assert await shop.stock(purchase.sku) == (3, 0, 0)
    assert await shop.event_types(payment.payment_id) == ["PaymentRequested", "FundsHoldFailed", "PaymentFailed"]
    await settled(shop)


async def test_out_of_stock_fails_and_the_ledger_releases_the_hold(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=1)

    payment = await shop.finish((await shop.pay(purchase, amount_minor=PRICE * 2, quantity=2)).payment_id)

    assert status_name(payment) == "FAILED"
    assert payment.reason == f"out of stock: {purchase.sku} has 1 available, 2 requested"
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    assert await shop.balance(purchase.merchant) == (0, 0, 0)
    assert await shop.stock(purchase.sku) == (1, 0, 0)
    assert await shop.event_types(payment.payment_id) == [
        "PaymentRequested",
        "FundsHeld",
        "StockReservationFailed",
        "FundsReleased",
        "PaymentFailed",
    ]
    await settled(shop)


async def test_amount_over_the_cap_is_rejected_and_never_started(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=MAX_AMOUNT_MINOR * 2, stock=3)

    payment = await shop.pay(purchase, amount_minor=MAX_AMOUNT_MINOR + 1)

    assert status_name(payment) == "REJECTED"
    assert payment.reason == f"amount {MAX_AMOUNT_MINOR + 1} exceeds the cap of {MAX_AMOUNT_MINOR} per payment"
    assert await shop.balance(purchase.payer) == (MAX_AMOUNT_MINOR * 2, 0, MAX_AMOUNT_MINOR * 2)
    assert await shop.event_types(payment.payment_id) == ["PaymentRejected"]
    await settled(shop)


async def test_payer_over_the_velocity_limit_is_rejected_even_when_requests_race(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=PRICE * VELOCITY_LIMIT, stock=VELOCITY_LIMIT)

    # All at once, spread over the payments replicas: the count must still hold.
    created = await asyncio.gather(*(shop.pay(purchase, amount_minor=PRICE) for _ in range(VELOCITY_LIMIT + 3)))

    statuses = [status_name(payment) for payment in created]
    assert statuses.count("PENDING") == VELOCITY_LIMIT
    assert statuses.count("REJECTED") == 3
    # Rejected attempts count too, so the count in the reason grows with each one.
    reasons = sorted(payment.reason for payment in created if status_name(payment) == "REJECTED")
    assert reasons == [
        f"payer made {count} payments in the last 60 s (limit {VELOCITY_LIMIT})"
        for count in range(VELOCITY_LIMIT, VELOCITY_LIMIT + 3)
    ]
    for payment in created:
        if status_name(payment) == "PENDING":
            assert status_name(await shop.finish(payment.payment_id)) == "COMPLETED"
    assert await shop.balance(purchase.payer) == (0, 0, 0)
    await settled(shop)


async def test_cancel_before_completion_undoes_the_hold_and_any_reservation(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    shop.cluster.pause("inventory")  # the saga cannot get past FUNDS_HELD
    try:
        created = await shop.pay(purchase, amount_minor=PRICE)
        held = await shop.wait_for(created.payment_id, {payments_pb2.PAYMENT_STATUS_FUNDS_HELD})
        assert status_name(held) == "FUNDS_HELD"
        assert await shop.balance(purchase.payer) == (5000, PRICE, 5000 - PRICE)

        cancelling = await shop.payments.CancelPayment(
            payments_pb2.CancelPaymentRequest(payment_id=created.payment_id, reason="customer changed their mind"),
            timeout=10,
        )
        payment = await shop.finish(created.payment_id)
    finally:
        shop.cluster.resume("inventory")

    assert status_name(cancelling) == "CANCELLING"
    assert (status_name(payment), payment.reason) == ("CANCELLED", "customer changed their mind")
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    await settled(shop)
    assert await shop.stock(purchase.sku) == (3, 0, 0)
    types = await shop.event_types(payment.payment_id)
    money_side = [name for name in types if not name.startswith("Stock")]
    assert money_side == [
        "PaymentRequested",
        "FundsHeld",
        "PaymentCancellationRequested",
        "FundsReleased",
        "PaymentCancelled",
    ]
    # Inventory reserves when it sees FundsHeld and releases when it sees FundsReleased; if a
    # replica handles the release first, nothing is ever reserved and there is nothing to release.
    assert [name for name in types if name.startswith("Stock")] in (["StockReserved", "StockReleased"], [])


async def test_saga_timeout_fails_the_payment_in_bounded_time_and_undoes_every_step(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    shop.cluster.pause("inventory")  # a step that never answers
    try:
        started = time.monotonic()
        created = await shop.pay(purchase, amount_minor=PRICE)
        payment = await shop.finish(created.payment_id, timeout_s=SAGA_TIMEOUT_S + 20)
        took_s = time.monotonic() - started
    finally:
        shop.cluster.resume("inventory")

    assert status_name(payment) == "FAILED"
    assert payment.reason == f"saga timed out after {SAGA_TIMEOUT_S} s waiting for inventory to reserve stock"
    assert SAGA_TIMEOUT_S <= took_s < SAGA_TIMEOUT_S + 20
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    await settled(shop)
    assert await shop.stock(purchase.sku) == (3, 0, 0)
    money_side = [name for name in await shop.event_types(payment.payment_id) if not name.startswith("Stock")]
    assert money_side == [
        "PaymentRequested",
        "FundsHeld",
        "PaymentCancellationRequested",
        "FundsReleased",
        "PaymentFailed",
    ]


async def test_refund_after_completion_reverses_the_money_and_restocks(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    completed = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)
    assert status_name(completed) == "COMPLETED"

    refunding = await shop.payments.RefundPayment(
        payments_pb2.RefundPaymentRequest(payment_id=completed.payment_id, reason="damaged"), timeout=10
    )
    payment = await shop.finish(completed.payment_id)
    payment = await shop.wait_for(completed.payment_id, {payments_pb2.PAYMENT_STATUS_REFUNDED})

    assert status_name(refunding) == "REFUNDING"
    assert status_name(payment) == "REFUNDED"
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    assert await shop.balance(purchase.merchant) == (0, 0, 0)
    await settled(shop)
    assert await shop.stock(purchase.sku) == (3, 0, 0)
    types = await shop.event_types(payment.payment_id)
    after_refund = types[types.index("PaymentRefundRequested") + 1 :]
    # Inventory may still be committing the sale when the refund is asked for: ignore that echo.
    compensation = [name for name in after_refund if name in ("FundsRefunded", "PaymentRefunded", "StockRestocked")]
    assert sorted(compensation) == ["FundsRefunded", "PaymentRefunded", "StockRestocked"]
    assert compensation.index("FundsRefunded") < compensation.index("PaymentRefunded")
    again = await shop.payments.RefundPayment(
        payments_pb2.RefundPaymentRequest(payment_id=payment.payment_id), timeout=10
    )
    assert status_name(again) == "REFUNDED"


async def test_a_refund_the_merchant_can_no_longer_pay_moves_nothing_and_can_be_asked_again(shop: Shop) -> None:
    # A wallet buys a mug from shop S1; S1 spends that money buying from shop S2; the wallet asks
    # for a refund. The ledger cannot take the money back, so nothing may move: not the money,
    # and not the mug back onto the shelf.
    purchase = await shop.setup(funds_minor=5000, stock=3)
    other_shop = await shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT)
    gadget = await shop.add_item(stock=1)
    bought = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)
    spent = await shop.finish(
        (await shop.pay(Purchase(purchase.merchant, other_shop, gadget), amount_minor=PRICE)).payment_id
    )
    assert (status_name(bought), status_name(spent)) == ("COMPLETED", "COMPLETED")
    await settled(shop)

    refunding = await shop.payments.RefundPayment(
        payments_pb2.RefundPaymentRequest(payment_id=bought.payment_id, reason="damaged"), timeout=10
    )
    refused = await shop.wait_for(bought.payment_id, {payments_pb2.PAYMENT_STATUS_COMPLETED})

    assert status_name(refunding) == "REFUNDING"
    assert status_name(refused) == "COMPLETED"
    assert refused.reason == (f"refund refused: merchant {purchase.merchant} has 0 available, the refund needs {PRICE}")
    assert await shop.balance(purchase.payer) == (5000 - PRICE, 0, 5000 - PRICE)
    assert await shop.balance(purchase.merchant) == (0, 0, 0)
    assert await shop.balance(other_shop) == (PRICE, 0, PRICE)
    await settled(shop)
    assert await shop.stock(purchase.sku) == (2, 0, 1)
    types = await shop.event_types(bought.payment_id)
    assert "FundsRefundFailed" in types
    assert not {"FundsRefunded", "StockRestocked", "PaymentRefunded"} & set(types)

    # Once the merchant has the money again, the same refund goes through, money first.
    await shop.ledger.Deposit(
        ledger_pb2.DepositRequest(
            account_id=purchase.merchant, amount=Money(amount_minor=PRICE, currency="EUR"), deposit_id=str(uuid.uuid4())
        ),
        timeout=10,
    )
    await shop.payments.RefundPayment(payments_pb2.RefundPaymentRequest(payment_id=bought.payment_id), timeout=10)
    refunded = await shop.wait_for(bought.payment_id, {payments_pb2.PAYMENT_STATUS_REFUNDED})

    assert status_name(refunded) == "REFUNDED"
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    assert await shop.balance(purchase.merchant) == (0, 0, 0)
    await settled(shop)
    assert await shop.stock(purchase.sku) == (3, 0, 0)
    types = await shop.event_types(bought.payment_id)
    assert types.index("FundsRefunded") < types.index("StockRestocked")


async def test_an_identical_retry_of_open_account_or_add_item_returns_what_the_first_made(shop: Shop) -> None:
    account_id, sku = str(uuid.uuid4()), f"sku-{uuid.uuid4().hex[:12]}"
    opening = ledger_pb2.OpenAccountRequest(
        account_id=account_id, kind=ledger_pb2.ACCOUNT_KIND_WALLET, currency="EUR", owner="Ada"
    )
    adding = inventory_pb2.AddItemRequest(sku=sku, name="Mug", unit_price=Money(amount_minor=PRICE, currency="EUR"))

    first_account = await shop.ledger.OpenAccount(opening, timeout=10)
    second_account = await shop.ledger.OpenAccount(opening, timeout=10)
    first_item = await shop.inventory.AddItem(adding, timeout=10)
    second_item = await shop.inventory.AddItem(adding, timeout=10)

    assert first_account == second_account and second_account.owner == "Ada"
    assert first_item == second_item and second_item.unit_price.amount_minor == PRICE


async def test_cancel_after_completion_and_refund_before_it_are_refused(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=1000, stock=3, price_minor=500)
    completed = await shop.finish((await shop.pay(purchase, amount_minor=500)).payment_id)
    failed = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)

    with pytest.raises(grpc.aio.AioRpcError) as cancel:
        await shop.payments.CancelPayment(
            payments_pb2.CancelPaymentRequest(payment_id=completed.payment_id), timeout=10
        )
    with pytest.raises(grpc.aio.AioRpcError) as refund:
        await shop.payments.RefundPayment(payments_pb2.RefundPaymentRequest(payment_id=failed.payment_id), timeout=10)

    assert cancel.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        cancel.value.details()
        == f"payment {completed.payment_id} is COMPLETED and can no longer be cancelled; refund it instead"
    )
    assert refund.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refund.value.details() == f"payment {failed.payment_id} is FAILED; only COMPLETED payments can be refunded"
    assert status_name(await shop.payment(completed.payment_id)) == "COMPLETED"
    assert await shop.balance(purchase.payer) == (500, 0, 500)


async def test_retry_with_the_same_idempotency_key_has_one_effect(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    key = f"order-{purchase.sku}"

    first = await shop.pay(purchase, amount_minor=PRICE, key=key)
    retried = await shop.payments.CreatePayment(
        payments_pb2.CreatePaymentRequest(
            idempotency_key=key,
            payer_account_id=purchase.payer,
            merchant_account_id=purchase.merchant,
            sku=purchase.sku,
            quantity=1,
            amount=first.amount,
        ),
        timeout=10,
    )
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await shop.pay(purchase, amount_minor=PRICE + 1, key=key)

    assert retried.replayed and retried.payment.payment_id == first.payment_id
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reused.value.details() == (
        f"idempotency_key {key!r} was already used by this client for a different payment; "
        "use a new key for a new payment"
    )
    assert status_name(await shop.finish(first.payment_id)) == "COMPLETED"
    assert await shop.balance(purchase.payer) == (5000 - PRICE, 0, 5000 - PRICE)
    listed = await shop.payments.ListPayments(
        payments_pb2.ListPaymentsRequest(payer_account_id=purchase.payer), timeout=10
    )
    assert [payment.payment_id for payment in listed.payments] == [first.payment_id]
    await settled(shop)


@pytest.mark.parametrize(
    ("unknown", "reason"),
    [("payer", "payer account does not exist"), ("merchant", "merchant account does not exist")],
)
async def test_unknown_account_fails_the_payment_with_the_ledgers_reason(shop: Shop, unknown: str, reason: str) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    # The payments service cannot see the ledger's accounts; the ledger refuses the hold.
    stranger = str(uuid.uuid4())
    purchase = Purchase(
        stranger if unknown == "payer" else purchase.payer,
        stranger if unknown == "merchant" else purchase.merchant,
        purchase.sku,
    )

    payment = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)

    assert (status_name(payment), payment.reason) == ("FAILED", reason)
    assert await shop.event_types(payment.payment_id) == ["PaymentRequested", "FundsHoldFailed", "PaymentFailed"]
    await settled(shop)


async def test_unknown_sku_fails_the_payment_and_releases_the_hold(shop: Shop) -> None:
    real = await shop.setup(funds_minor=5000, stock=3)
    purchase = Purchase(real.payer, real.merchant, "no-such-sku")

    payment = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)

    assert (status_name(payment), payment.reason) == ("FAILED", "unknown SKU no-such-sku")
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    assert await shop.event_types(payment.payment_id) == [
        "PaymentRequested",
        "FundsHeld",
        "StockReservationFailed",
        "FundsReleased",
        "PaymentFailed",
    ]
    await settled(shop)


async def test_paying_less_than_the_price_fails_and_releases_the_hold(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)

    payment = await shop.finish((await shop.pay(purchase, amount_minor=1, quantity=2)).payment_id)

    assert status_name(payment) == "FAILED"
    assert payment.reason == f"price mismatch: 2 x {purchase.sku} costs {PRICE * 2} EUR, the payment is 1 EUR"
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    assert await shop.stock(purchase.sku) == (3, 0, 0)
    await settled(shop)


async def test_concurrent_retries_with_one_key_make_one_payment(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=5000, stock=3)
    request = payments_pb2.CreatePaymentRequest(
        idempotency_key="same-moment",
        payer_account_id=purchase.payer,
        merchant_account_id=purchase.merchant,
        sku=purchase.sku,
        quantity=1,
        amount=Money(amount_minor=PRICE, currency="EUR"),
    )

    responses = await asyncio.gather(*(shop.payments.CreatePayment(request, timeout=10) for _ in range(10)))

    assert len({response.payment.payment_id for response in responses}) == 1
    assert sorted(response.replayed for response in responses) == [False] + [True] * 9
    assert status_name(await shop.finish(responses[0].payment.payment_id)) == "COMPLETED"
    assert await shop.balance(purchase.payer) == (5000 - PRICE, 0, 5000 - PRICE)


async def test_a_key_is_the_clients_own_whichever_wallet_it_pays_from(shop: Shop) -> None:
    """Keys belong to the calling client (another client's same key is another payment: see
    test_ownership); the same client's key for another wallet is a different request, refused."""
    first = await shop.setup(funds_minor=5000, stock=3)
    second = await shop.setup(funds_minor=5000, stock=3)
    key = f"order-{uuid.uuid4().hex[:8]}"

    a = await shop.pay(first, amount_minor=PRICE, key=key)
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await shop.pay(second, amount_minor=PRICE, key=key)

    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert status_name(await shop.finish(a.payment_id)) == "COMPLETED"
    assert await shop.balance(second.payer) == (5000, 0, 5000), "the refused purchase moved nothing"


async def test_cancel_racing_the_capture_ends_cancelled_with_everything_undone(shop: Shop) -> None:
    # Stock gets reserved while the ledger is frozen, then the client cancels: when the ledger
    # wakes it sees StockReserved and the cancellation from two streams, in either order. Capture
    # then refund, or release then ignore the capture: both must end the same way.
    purchase = await shop.setup(funds_minor=5000, stock=3)
    shop.cluster.pause("inventory")
    try:
        created = await shop.pay(purchase, amount_minor=PRICE)
        await shop.wait_for(created.payment_id, {payments_pb2.PAYMENT_STATUS_FUNDS_HELD})
        shop.cluster.pause("ledger")
    finally:
        shop.cluster.resume("inventory")
    try:
        reserved = await shop.wait_for(created.payment_id, {payments_pb2.PAYMENT_STATUS_STOCK_RESERVED})
        assert status_name(reserved) == "STOCK_RESERVED"
        await shop.payments.CancelPayment(payments_pb2.CancelPaymentRequest(payment_id=created.payment_id), timeout=10)
    finally:
        shop.cluster.resume("ledger")

    payment = await shop.finish(created.payment_id)

    assert (status_name(payment), payment.reason) == ("CANCELLED", "cancelled by the client")
    assert await shop.balance(purchase.payer) == (5000, 0, 5000)
    assert await shop.balance(purchase.merchant) == (0, 0, 0)
    await settled(shop)
    assert await shop.stock(purchase.sku) == (3, 0, 0)


async def test_purchases_beyond_their_tiers_in_flight_limit_are_refused_and_change_nothing(shop: Shop) -> None:
    merchant = await shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT)
    sku = await shop.add_item(stock=MAX_IN_FLIGHT + 5)
    accepted: list[payments_pb2.Payment] = []
    refused: tuple[Purchase, str, grpc.aio.AioRpcError] | None = None
    shop.cluster.pause("inventory")  # accepted purchases stay in flight at FUNDS_HELD
    try:
        for _ in range(MAX_IN_FLIGHT + 5):
            purchase = Purchase(await shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, PRICE), merchant, sku)
            key = str(uuid.uuid4())
            await asyncio.sleep(REFRESH_S * 1.2)  # every replica has counted the purchases before
            try:
                accepted.append(await shop.pay(purchase, amount_minor=PRICE, key=key))
            except grpc.aio.AioRpcError as error:
                refused = (purchase, key, error)
                break
        assert refused is not None, f"{len(accepted)} purchases in flight and none refused"
        purchase, key, refusal = refused
        assert refusal.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in flight" in (refusal.details() or "") and "retry" in (refusal.details() or "")
        # Earlier tests' purchases may still be in flight too, so at most the standard tier's
        # share of the limit got in.
        assert 0 < len(accepted) <= admission_limits(PaymentLimits(max_in_flight=MAX_IN_FLIGHT))["standard"]
        # The refused request left nothing behind: no payment, no hold.
        listed = await shop.payments.ListPayments(
            payments_pb2.ListPaymentsRequest(payer_account_id=purchase.payer), timeout=10
        )
        assert list(listed.payments) == []
        assert await shop.balance(purchase.payer) == (PRICE, 0, PRICE)
        # Standard purchases are refused first: the room above their share is kept for the
        # stricter tiers, so a critical purchase still gets in.
        urgent = Purchase(await shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, PRICE), merchant, sku)
        accepted.append(await shop.pay(urgent, amount_minor=PRICE, tier=payments_pb2.SLA_TIER_CRITICAL))
    finally:
        shop.cluster.resume("inventory")

    for payment in accepted:
        assert status_name(await shop.finish(payment.payment_id)) == "COMPLETED"
    # Once the purchases in flight are done, the refused request, sent again as it was, goes through.
    retried = await _create_when_admitted(shop, purchase, key)
    assert not retried.replayed
    assert status_name(await shop.finish(retried.payment.payment_id)) == "COMPLETED"
    assert await shop.balance(purchase.payer) == (0, 0, 0)
    await settled(shop)


async def _create_when_admitted(
    shop: Shop, purchase: Purchase, key: str, timeout_s: float = 20.0
) -> payments_pb2.CreatePaymentResponse:
    return await retry_while(
        lambda: shop.create(purchase, amount_minor=PRICE, key=key),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        time.monotonic() + timeout_s,
        poll_s=0.2,
    )
