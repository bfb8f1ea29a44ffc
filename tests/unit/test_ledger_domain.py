"""The ledger's rules as pure code: holds, captures, releases, refunds, deposits, invariants."""

from __future__ import annotations

import pytest

from paysaga.core.errors import FailedPrecondition
from services.ledger import domain
from services.ledger.domain import Account, AccountKind, Entry, EntryKind, Hold, HoldStatus, Line


def accounts(wallet_minor: int = 5000) -> tuple[Account, Account]:
    return (
        Account("payer", AccountKind.WALLET, "EUR", "Ada", balance_minor=wallet_minor),
        Account("merchant", AccountKind.MERCHANT, "EUR", "Shop"),
    )


def hold_of(amount_minor: int) -> Hold:
    return Hold("h1", "p1", "payer", "merchant", amount_minor, "EUR", HoldStatus.HELD)


def test_an_entry_that_does_not_balance_cannot_exist() -> None:
    with pytest.raises(AssertionError, match="does not balance"):
        Entry("e1", EntryKind.CAPTURE, "p1", (Line("payer", -100), Line("merchant", 99)))


@pytest.mark.parametrize(
    ("amount_minor", "currency", "reason"),
    [
        (5001, "EUR", "insufficient funds: available 5000, needed 5001"),
        (100, "USD", "currency mismatch: payment in USD, payer in EUR, merchant in EUR"),
    ],
)
def test_hold_refusals_say_why(amount_minor: int, currency: str, reason: str) -> None:
    payer, merchant = accounts()
    assert domain.hold_refusal(payer, merchant, amount_minor, currency) == reason


def test_hold_refusals_for_missing_or_wrong_kinds_of_accounts() -> None:
    payer, merchant = accounts()
    assert domain.hold_refusal(None, merchant, 1, "EUR") == "payer account does not exist"
    assert domain.hold_refusal(payer, None, 1, "EUR") == "merchant account does not exist"
    assert domain.hold_refusal(payer, payer, 1, "EUR") == "merchant account is not a merchant account"
    external = Account("ext", AccountKind.EXTERNAL, "EUR", "funding", balance_minor=-100)
    assert domain.hold_refusal(external, merchant, 1, "EUR") == "payer account cannot pay"
    assert domain.hold_refusal(payer, merchant, 5000, "EUR") is None


def test_hold_then_capture_moves_the_money_and_clears_the_hold() -> None:
    payer, merchant = accounts()
    hold = hold_of(1250)
    domain.place_hold(payer, hold)
    assert (payer.balance_minor, payer.held_minor, payer.available_minor) == (5000, 1250, 3750)

    entry = domain.capture(hold, payer, merchant)

    assert (payer.balance_minor, payer.held_minor, merchant.balance_minor) == (3750, 0, 1250)
    assert hold.status is HoldStatus.CAPTURED
    assert {line.account_id: line.amount_minor for line in entry.lines} == {"payer": -1250, "merchant": 1250}


def test_release_voids_the_hold_without_posting() -> None:
    payer, _ = accounts()
    hold = hold_of(1250)
    domain.place_hold(payer, hold)

    domain.release(hold, payer)

    assert (payer.balance_minor, payer.held_minor, payer.available_minor) == (5000, 0, 5000)
    assert hold.status is HoldStatus.RELEASED


def test_refund_is_a_new_reversing_entry() -> None:
    payer, merchant = accounts()
    hold = hold_of(1250)
    domain.place_hold(payer, hold)
    capture = domain.capture(hold, payer, merchant)

    refund = domain.refund(hold, payer, merchant)

    assert refund.entry_id != capture.entry_id and refund.kind is EntryKind.REFUND
    assert {line.account_id: line.amount_minor for line in refund.lines} == {"payer": 1250, "merchant": -1250}
    assert (payer.balance_minor, merchant.balance_minor, hold.status) == (5000, 0, HoldStatus.REFUNDED)


def test_refund_that_would_overdraw_the_merchant_is_refused_and_changes_nothing() -> None:
    payer, merchant = accounts()
    hold = hold_of(1250)
    domain.place_hold(payer, hold)
    domain.capture(hold, payer, merchant)
    merchant.held_minor = 1000  # e.g. the merchant's own purchase is pending

    assert domain.refund_refusal(hold, merchant) == "merchant merchant has 250 available, the refund needs 1250"
    with pytest.raises(AssertionError, match="without the money for it"):
        domain.refund(hold, payer, merchant)

    assert (payer.balance_minor, merchant.balance_minor, hold.status) == (3750, 1250, HoldStatus.CAPTURED)


def test_a_hold_beyond_the_available_balance_trips_the_invariant() -> None:
    payer, _ = accounts(wallet_minor=100)
    with pytest.raises(AssertionError, match="overdrawn"):
        domain.place_hold(payer, hold_of(101))


def test_deposits_come_from_the_external_account_which_alone_may_go_negative() -> None:
    payer, _ = accounts(wallet_minor=0)
    external = Account(domain.external_account_id("EUR"), AccountKind.EXTERNAL, "EUR", "external")

    entry = domain.deposit(payer, external, 700, "d1")

    assert (payer.balance_minor, external.balance_minor) == (700, -700)
    assert entry.entry_id == "d1"
    assert domain.external_account_id("EUR") == domain.external_account_id("EUR") != domain.external_account_id("USD")
    with pytest.raises(FailedPrecondition):
        domain.deposit(external, payer, 1, "d2")


def test_deposits_stop_with_a_clear_refusal_at_the_funding_accounts_limit() -> None:
    wallet, _ = accounts(wallet_minor=0)
    external = Account(domain.external_account_id("EUR"), AccountKind.EXTERNAL, "EUR", "external funding EUR")
    external.balance_minor = -domain.MAX_BALANCE_MINOR + 10

    with pytest.raises(FailedPrecondition, match="deposits in EUR have reached the ledger's limit"):
        domain.deposit(wallet, external, 11, "d1")

    assert (wallet.balance_minor, external.balance_minor) == (0, -domain.MAX_BALANCE_MINOR + 10)
    domain.deposit(wallet, external, 10, "d2")
    assert external.balance_minor == -domain.MAX_BALANCE_MINOR
