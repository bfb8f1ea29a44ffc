"""Loading and saving the ledger's domain objects inside a unit of work."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from paysaga.runtime.storage.prepared import Prepared
from paysaga.runtime.storage.unit_of_work import Repository, UnitOfWork
from services.ledger.adapters.tables import accounts, holds, journal_entries, journal_lines, statement_lines
from services.ledger.domain import Account, AccountKind, Entry, EntryKind, Hold, HoldStatus

# The hot statements are built and compiled once (paysaga.runtime.storage.prepared); an UPDATE's SET
# takes the columns named by the parameters, and its key is bound under another name.
_LOAD_ACCOUNTS = Prepared(
    sa.select(accounts)
    .where(accounts.c.account_id.in_(sa.bindparam("account_ids", expanding=True)))
    .order_by(accounts.c.account_id)
    .with_for_update()
)
_UPDATE_ACCOUNT = Prepared(accounts.update().where(accounts.c.account_id == sa.bindparam("b_account_id")))
_LOAD_HOLD = Prepared(sa.select(holds).where(holds.c.payment_id == sa.bindparam("payment_id")).with_for_update())
_INSERT_HOLD = Prepared(holds.insert())
_UPDATE_HOLD = Prepared(holds.update().where(holds.c.hold_id == sa.bindparam("b_hold_id")))
_DELETE_HOLD = Prepared(holds.delete().where(holds.c.hold_id == sa.bindparam("b_hold_id")))
_INSERT_ENTRY = Prepared(journal_entries.insert())
_INSERT_LINES = Prepared(journal_lines.insert())
_ENTRY_HASH = Prepared(
    sa.select(journal_entries.c.request_hash).where(journal_entries.c.entry_id == sa.bindparam("entry_id"))
)
_INSERT_STATEMENT_LINE = Prepared(statement_lines.insert())


def account_from_row(row: Any) -> Account:
    return Account(
        row.account_id,
        AccountKind(row.kind),
        row.currency,
        row.owner,
        row.balance_minor,
        row.held_minor,
        row.owner_client,
    )


class LedgerRepository(Repository):
    """Accounts, holds, journal entries and statement lines; rows loaded for update are locked until commit."""

    async def load_accounts(self, account_ids: Iterable[str]) -> dict[str, Account]:
        """The accounts that exist among account_ids, locked for update in id order (no deadlocks)."""
        rows = await self._unit.run(_LOAD_ACCOUNTS, {"account_ids": sorted(set(account_ids))})
        return {row.account_id: account_from_row(row) for row in rows}

    async def insert_account(self, account: Account) -> None:
        await self._connection.execute(
            accounts.insert().values(
                account_id=account.account_id,
                kind=account.kind.value,
                currency=account.currency,
                owner=account.owner,
                balance_minor=account.balance_minor,
                held_minor=account.held_minor,
                owner_client=account.owner_client,
                created_at=self._unit.now(),
            )
        )

    async def save_accounts(self, *changed: Account) -> None:
        await self._unit.run(
            _UPDATE_ACCOUNT,
            [
                {
                    "b_account_id": account.account_id,
                    "balance_minor": account.balance_minor,
                    "held_minor": account.held_minor,
                }
                for account in changed
            ],
        )

    async def load_hold(self, payment_id: str) -> Hold | None:
        row = (await self._unit.run(_LOAD_HOLD, {"payment_id": payment_id})).first()
        if row is None:
            return None
        return Hold(
            row.hold_id,
            row.payment_id,
            row.payer_account_id,
            row.merchant_account_id,
            row.amount_minor,
            row.currency,
            HoldStatus(row.status),
        )

    async def insert_hold(self, hold: Hold) -> None:
        await self._unit.run(
            _INSERT_HOLD,
            {
                "hold_id": hold.hold_id,
                "payment_id": hold.payment_id,
                "payer_account_id": hold.payer_account_id,
                "merchant_account_id": hold.merchant_account_id,
                "amount_minor": hold.amount_minor,
                "currency": hold.currency,
                "status": hold.status.value,
                "updated_at": self._unit.now(),
            },
        )

    async def delete_marker(self, hold: Hold) -> None:
        """Remove a marker (no money in it) that a hold now takes the place of."""
        assert hold.amount_minor == 0, f"hold {hold.hold_id} holds money: not a marker"
        await self._unit.run(_DELETE_HOLD, {"b_hold_id": hold.hold_id})

    async def save_hold(self, hold: Hold) -> None:
        await self._unit.run(
            _UPDATE_HOLD, {"b_hold_id": hold.hold_id, "status": hold.status.value, "updated_at": self._unit.now()}
        )

    async def insert_entry(self, entry: Entry, request_hash: str | None = None) -> None:
        await self._unit.run(
            _INSERT_ENTRY,
            {
                "entry_id": entry.entry_id,
                "kind": entry.kind.value,
                "saga_id": entry.saga_id,
                "request_hash": request_hash,
                "created_at": self._unit.now(),
            },
        )
        await self._unit.run(
            _INSERT_LINES,
            [
                {"entry_id": entry.entry_id, "account_id": line.account_id, "amount_minor": line.amount_minor}
                for line in entry.lines
            ],
        )

    async def find_entry_hash(self, entry_id: str) -> tuple[bool, str | None]:
        row = (await self._unit.run(_ENTRY_HASH, {"entry_id": entry_id})).first()
        return (row is not None, row.request_hash if row is not None else None)

    async def add_statement_line(
        self,
        account: Account,
        *,
        entry_id: str,
        kind: EntryKind,
        amount_minor: int,
        saga_id: str,
        description: str,
    ) -> None:
        await self._unit.run(
            _INSERT_STATEMENT_LINE,
            {
                "account_id": account.account_id,
                "entry_id": entry_id,
                "kind": kind.value,
                "amount_minor": amount_minor,
                "balance_after_minor": account.balance_minor,
                "held_after_minor": account.held_minor,
                "saga_id": saga_id,
                "description": description,
                "occurred_at": self._unit.now(),
            },
        )


class LedgerUnit(UnitOfWork):
    """The ledger service's unit of work."""

    @functools.cached_property
    def ledger(self) -> LedgerRepository:
        return LedgerRepository(self)
