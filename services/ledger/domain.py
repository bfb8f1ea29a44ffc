"""The ledger's rules: accounts, two-phase transfers (hold, then capture or release), refunds
as reversing entries, deposits from an external funding account. Pure code, no I/O.

Invariants, asserted whenever state changes:
- every journal entry's lines sum to zero (money is only moved, never made);
- a wallet or merchant account never has a negative balance, held amount or available amount;
- only the per-currency external funding account may go negative: it is where deposits come from.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from paysaga.core.errors import FailedPrecondition

EXTERNAL_NAMESPACE = uuid.UUID("6d0b7a4e-6f1c-4b5e-9d7a-2b1c0e9f8a11")
# No balance may come near int64 overflow.
MAX_BALANCE_MINOR = 2**62


class AccountKind(StrEnum):
    WALLET = "WALLET"
    MERCHANT = "MERCHANT"
    EXTERNAL = "EXTERNAL"


class HoldStatus(StrEnum):
    HELD = "HELD"
    CAPTURED = "CAPTURED"
    RELEASED = "RELEASED"
    REFUNDED = "REFUNDED"
    # A cancellation arrived before any hold: a later request for this payment must not hold.
    CANCELLED = "CANCELLED"
    # A review's approval arrived before the request it approves: the request, when it comes,
    # holds and goes on at once (FundsHeld), as if it had never waited for review.
    APPROVED = "APPROVED"


class EntryKind(StrEnum):
    DEPOSIT = "DEPOSIT"
    HOLD = "HOLD"
    CAPTURE = "CAPTURE"
    RELEASE = "RELEASE"
    REFUND = "REFUND"


def external_account_id(currency: str) -> str:
    return str(uuid.uuid5(EXTERNAL_NAMESPACE, f"external-funding:{currency}"))


@dataclass
class Account:
    account_id: str
    kind: AccountKind
    currency: str
    owner: str
    balance_minor: int = 0
    held_minor: int = 0
    # The client that owns it (paysaga.core.access); "" for an account only ops may use.
    owner_client: str = ""

    @property
    def available_minor(self) -> int:
        return self.balance_minor - self.held_minor

    def check(self) -> None:
        assert self.held_minor >= 0, f"account {self.account_id} holds a negative amount"
        assert abs(self.balance_minor) <= MAX_BALANCE_MINOR, f"account {self.account_id} balance out of range"
        if self.kind is not AccountKind.EXTERNAL:
            assert self.available_minor >= 0, f"account {self.account_id} would be overdrawn"


@dataclass
class Hold:
    hold_id: str
    payment_id: str
    payer_account_id: str
    merchant_account_id: str
    amount_minor: int
    currency: str
    status: HoldStatus


@dataclass(frozen=True)
class Line:
    account_id: str
    amount_minor: int


@dataclass(frozen=True)
class Entry:
    """A posted journal entry. Its lines always balance to zero."""

    entry_id: str
    kind: EntryKind
    saga_id: str
    lines: tuple[Line, ...]

    def __post_init__(self) -> None:
        assert len(self.lines) >= 2, "an entry moves money between at least two accounts"
        assert sum(line.amount_minor for line in self.lines) == 0, f"entry {self.entry_id} does not balance"


def post(entry: Entry, accounts: dict[str, Account]) -> None:
    for line in entry.lines:
        accounts[line.account_id].balance_minor += line.amount_minor
    for line in entry.lines:
        accounts[line.account_id].check()


def hold_refusal(payer: Account | None, merchant: Account | None, amount_minor: int, currency: str) -> str | None:
    """Why the payer's funds cannot be held for this purchase, or None if they can."""
    if payer is None:
        return "payer account does not exist"
    if merchant is None:
        return "merchant account does not exist"
    if payer.kind is AccountKind.EXTERNAL:
        return "payer account cannot pay"  # wallets pay, and merchants may buy from other merchants
    if merchant.kind is not AccountKind.MERCHANT:
        return "merchant account is not a merchant account"
    if payer.currency != currency or merchant.currency != currency:
        return f"currency mismatch: payment in {currency}, payer in {payer.currency}, merchant in {merchant.currency}"
    if payer.available_minor < amount_minor:
        return f"insufficient funds: available {payer.available_minor}, needed {amount_minor}"
    return None


def place_hold(payer: Account, hold: Hold) -> None:
    payer.held_minor += hold.amount_minor
    payer.check()


def release(hold: Hold, payer: Account) -> None:
    assert hold.status is HoldStatus.HELD
    payer.held_minor -= hold.amount_minor
    hold.status = HoldStatus.RELEASED
    payer.check()


def capture(hold: Hold, payer: Account, merchant: Account) -> Entry:
    assert hold.status is HoldStatus.HELD
    payer.held_minor -= hold.amount_minor
    entry = transfer(str(uuid.uuid4()), EntryKind.CAPTURE, hold.payment_id, payer, merchant, hold.amount_minor)
    hold.status = HoldStatus.CAPTURED
    return entry


def refund_refusal(hold: Hold, merchant: Account) -> str | None:
    """Why the capture cannot be reversed now (the merchant spent the money), or None if it can."""
    if merchant.available_minor < hold.amount_minor:
        return (
            f"merchant {merchant.account_id} has {merchant.available_minor} available, "
            f"the refund needs {hold.amount_minor}"
        )
    return None


def refund(hold: Hold, payer: Account, merchant: Account) -> Entry:
    """Reverse a capture with a new entry; the original entry is never edited."""
    assert hold.status is HoldStatus.CAPTURED
    assert refund_refusal(hold, merchant) is None, f"refund of {hold.payment_id} without the money for it"
    entry = transfer(str(uuid.uuid4()), EntryKind.REFUND, hold.payment_id, merchant, payer, hold.amount_minor)
    hold.status = HoldStatus.REFUNDED
    return entry


def deposit(account: Account, external: Account, amount_minor: int, deposit_id: str) -> Entry:
    if account.kind is AccountKind.EXTERNAL:
        raise FailedPrecondition("deposits go to wallets and merchant accounts")
    if account.balance_minor + amount_minor > MAX_BALANCE_MINOR:
        raise FailedPrecondition(f"deposit would take account {account.account_id} over {MAX_BALANCE_MINOR}")
    if external.balance_minor - amount_minor < -MAX_BALANCE_MINOR:
        # All money enters through the currency's one funding account, whose balance is bounded too.
        raise FailedPrecondition(
            f"deposits in {external.currency} have reached the ledger's limit of {MAX_BALANCE_MINOR} minor units"
        )
    return transfer(deposit_id, EntryKind.DEPOSIT, "", external, account, amount_minor)


def transfer(
    entry_id: str, kind: EntryKind, saga_id: str, source: Account, target: Account, amount_minor: int
) -> Entry:
    """Post a two-line entry moving amount_minor from source to target."""
    entry = Entry(
        entry_id, kind, saga_id, (Line(source.account_id, -amount_minor), Line(target.account_id, amount_minor))
    )
    post(entry, {source.account_id: source, target.account_id: target})
    return entry
