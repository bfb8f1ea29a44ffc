"""The ledger's read queries: each in a read-only snapshot, none of them locks."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core.access import Caller
from paysaga.core.errors import NotFound
from paysaga.core.validation import PageRequest
from paysaga.runtime.storage.pages import page
from paysaga.runtime.storage.unit_of_work import Database
from services.ledger.adapters.repository import account_from_row
from services.ledger.adapters.tables import accounts, statement_lines
from services.ledger.domain import Account

SERVICE = "ledger"
_ACCOUNT = sa.select(accounts).where(accounts.c.account_id == sa.bindparam("account_id"))


async def account(database: Database, account_id: str, caller: Caller) -> tuple[Account, Any]:
    """The account, and its row (for what the domain object does not carry, e.g. created_at), if
    the caller owns it (or is ops); to anyone else it does not exist."""
    async with database.read() as connection:
        row = await _account_row(connection, account_id, caller)
    return account_from_row(row), row


async def statement_page(
    database: Database, account_id: str, request: PageRequest, caller: Caller
) -> tuple[Account, list[Any], str]:
    """The account and a page of its statement lines, oldest first; and the next page's token."""
    async with database.read() as connection:
        row = await _account_row(connection, account_id, caller)
        query = sa.select(statement_lines).where(statement_lines.c.account_id == account_id)
        found = await page(connection, query, statement_lines.c.line_id, request)
    return account_from_row(row), found.rows, found.next_page_token


async def _account_row(connection: AsyncConnection, account_id: str, caller: Caller) -> Any:
    row = (await connection.execute(_ACCOUNT, {"account_id": account_id})).first()
    if row is None or not caller.may_use(SERVICE, row.owner_client):
        raise NotFound(f"account {account_id} does not exist")
    return row
