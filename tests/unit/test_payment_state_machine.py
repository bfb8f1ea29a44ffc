"""The payment state machine and threshold rules as pure code."""

from __future__ import annotations

import datetime as dt

import pytest

from paysaga.core.errors import FailedPrecondition
from services.payments.domain import Payment, PurchaseRequest, Status

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
REQUEST = PurchaseRequest("key-1", "payer", "merchant", "mug", 1, 1250, "EUR", 1)


def pending() -> Payment:
    return Payment("p1", REQUEST, Status.PENDING, "", 1, NOW, NOW, NOW + dt.timedelta(seconds=30))


def test_the_happy_path_moves_forward_and_completes() -> None:
    payment = pending()
    assert payment.advance(Status.FUNDS_HELD, NOW)
    assert payment.advance(Status.STOCK_RESERVED, NOW)
    completed = payment.complete(NOW)
    assert payment.status is Status.COMPLETED and payment.version == 4
    assert completed is not None and type(completed).__name__ == "PaymentCompleted"


def test_progress_events_arriving_out_of_order_never_move_it_back() -> None:
    payment = pending()
    assert payment.advance(Status.STOCK_RESERVED, NOW)
    assert not payment.advance(Status.FUNDS_HELD, NOW)
    assert payment.status is Status.STOCK_RESERVED


def test_a_failed_step_fails_the_payment_with_the_first_reason() -> None:
    payment = pending()
    payment.advance(Status.FUNDS_HELD, NOW)
    assert payment.note_failure("out of stock: mug has 0 available, 1 requested", NOW)

    failed = payment.fail("stock not reserved: out of stock", NOW)

    assert payment.status is Status.FAILED
    assert payment.reason == "out of stock: mug has 0 available, 1 requested"
    assert failed is not None and type(failed).__name__ == "PaymentFailed"
    assert payment.fail("again", NOW) is None, "a terminal payment ignores late events"


def test_cancel_then_the_ledger_release_ends_cancelled_and_a_timeout_ends_failed() -> None:
    cancelled, timed_out = pending(), pending()
    assert cancelled.request_cancellation("changed my mind", NOW) is not None
    assert cancelled.request_cancellation("twice", NOW) is None, "a second cancel changes nothing"
    timed_out.request_cancellation("saga timed out", NOW, timed_out=True)

    cancelled.fail("hold released", NOW)
    timed_out.fail("hold released", NOW)

    assert (cancelled.status, cancelled.reason) == (Status.CANCELLED, "changed my mind")
    assert (timed_out.status, timed_out.reason) == (Status.FAILED, "saga timed out")


def test_a_capture_racing_a_cancel_does_not_complete_it_and_the_refund_concludes_it() -> None:
    payment = pending()
    payment.request_cancellation("changed my mind", NOW)

    assert payment.complete(NOW) is None
    payment.conclude_refund(NOW)

    assert payment.status is Status.CANCELLED


def test_refund_only_after_completion_and_cancel_only_before() -> None:
    payment = pending()
    with pytest.raises(FailedPrecondition, match="only COMPLETED payments can be refunded"):
        payment.request_refund("no", NOW)
    payment.complete(NOW)
    with pytest.raises(FailedPrecondition, match="refund it instead"):
        payment.request_cancellation("too late", NOW)

    assert payment.request_refund("damaged", NOW) is not None
    assert payment.request_refund("again", NOW) is None
    payment.conclude_refund(NOW)
    assert payment.status is Status.REFUNDED


def test_the_fingerprint_tells_a_retry_from_a_different_request_under_the_same_key() -> None:
    same = PurchaseRequest("key-1", "payer", "merchant", "mug", 1, 1250, "EUR", 1)
    different = PurchaseRequest("key-1", "payer", "merchant", "mug", 2, 1250, "EUR", 1)
    assert REQUEST.fingerprint() == same.fingerprint() != different.fingerprint()


def completed() -> Payment:
    payment = pending()
    payment.advance(Status.STOCK_RESERVED, NOW)
    payment.complete(NOW)
    return payment


def test_a_refund_the_ledger_refuses_leaves_it_completed_with_the_refusal_and_refundable_again() -> None:
    payment = completed()
    assert payment.request_refund("damaged", NOW) is not None

    emitted = payment.refund_refused("merchant m has 0 available, the refund needs 1250", NOW)

    assert emitted is None, "it completed once: no second PaymentCompleted"
    assert (payment.status, payment.reason) == (
        Status.COMPLETED,
        "refund refused: merchant m has 0 available, the refund needs 1250",
    )
    again = payment.request_refund("damaged", NOW)
    assert (again is not None, payment.status) == (True, Status.REFUNDING)
    concluded = payment.conclude_refund(NOW)
    assert (concluded is not None, payment.status) == (True, Status.REFUNDED)


def test_a_cancel_the_ledger_cannot_undo_ends_completed() -> None:
    payment = pending()
    payment.advance(Status.STOCK_RESERVED, NOW)
    payment.request_cancellation("changed my mind", NOW)
    assert payment.complete(NOW) is None, "the capture reported while cancelling waits for the ledger"

    emitted = payment.refund_refused("merchant m has 0 available, the refund needs 1250", NOW)

    assert payment.status is Status.COMPLETED
    assert payment.reason.startswith("cancellation refused, the purchase went through: merchant m has 0")
    assert emitted is not None and type(emitted).__name__ == "PaymentCompleted"
    assert completed().refund_refused("late", NOW) is None, "a refusal nobody waits for changes nothing"
