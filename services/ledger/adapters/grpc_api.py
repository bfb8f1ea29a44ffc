"""The ledger gRPC servicer: thin, proto in, handler call, proto out."""

from __future__ import annotations

from typing import Any

import grpc
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core import validation
from paysaga.core.errors import InvalidArgument, NotFound
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.runtime.grpc_server import GrpcService, domain_errors_as_status
from paysaga.runtime.security.authz import Rule
from paysaga.runtime.storage.unit_of_work import Database
from services.ledger import handlers
from services.ledger.adapters.repository import account_from_row
from services.ledger.adapters.tables import accounts, statement_lines
from services.ledger.domain import Account, AccountKind

KINDS = {ledger_pb2.ACCOUNT_KIND_WALLET: AccountKind.WALLET, ledger_pb2.ACCOUNT_KIND_MERCHANT: AccountKind.MERCHANT}
KIND_TO_PROTO = {kind: number for number, kind in KINDS.items()}


class LedgerServiceServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, database: Database) -> None:
        self._database = database

    @domain_errors_as_status
    async def OpenAccount(
        self, request: ledger_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Account:
        if request.kind not in KINDS:
            raise InvalidArgument("kind must be ACCOUNT_KIND_WALLET or ACCOUNT_KIND_MERCHANT")
        account = Account(
            validation.uuid_text(request.account_id, "account_id"),
            KINDS[request.kind],
            validation.currency(request.currency),
            validation.text(request.owner, "owner", required=True),
        )
        await self._database.retrying(lambda unit: handlers.open_account(unit, account))
        return await self._account(account.account_id)

    @domain_errors_as_status
    async def Deposit(
        self, request: ledger_pb2.DepositRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.DepositResponse:
        account_id = validation.uuid_text(request.account_id, "account_id")
        deposit_id = validation.uuid_text(request.deposit_id, "deposit_id")
        amount_minor = validation.positive_amount(request.amount.amount_minor)
        currency = validation.currency(request.amount.currency, "amount.currency")
        account, replayed = await self._database.retrying(
            lambda unit: handlers.deposit(unit, account_id, amount_minor, currency, deposit_id)
        )
        return ledger_pb2.DepositResponse(balance=_balance(account), replayed=replayed)

    @domain_errors_as_status
    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Balance:
        account_id = validation.uuid_text(request.account_id, "account_id")
        async with self._database.read() as connection:
            row = await _account_row(connection, account_id)
        return _balance(account_from_row(row))

    @domain_errors_as_status
    async def GetStatement(
        self, request: ledger_pb2.GetStatementRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Statement:
        account_id = validation.uuid_text(request.account_id, "account_id")
        size = validation.page_size(request.page_size)
        after = validation.page_token(request.page_token)
        async with self._database.read() as connection:
            account = await _account_row(connection, account_id)
            rows = (
                await connection.execute(
                    sa.select(statement_lines)
                    .where(statement_lines.c.account_id == account_id, statement_lines.c.line_id > after)
                    .order_by(statement_lines.c.line_id)
                    .limit(size + 1)
                )
            ).all()
        statement = ledger_pb2.Statement(account_id=account_id, currency=account.currency)
        for row in rows[:size]:
            line = statement.lines.add(
                entry_id=row.entry_id,
                kind=ledger_pb2.EntryKind.Value(f"ENTRY_KIND_{row.kind}"),
                amount_minor=row.amount_minor,
                balance_after_minor=row.balance_after_minor,
                held_after_minor=row.held_after_minor,
                saga_id=row.saga_id,
                description=row.description,
            )
            line.occurred_at.FromDatetime(row.occurred_at)
        statement.next_page_token = validation.next_page_token(rows, size, "line_id")
        return statement

    async def _account(self, account_id: str) -> ledger_pb2.Account:
        async with self._database.read() as connection:
            row = (await connection.execute(sa.select(accounts).where(accounts.c.account_id == account_id))).one()
        message = ledger_pb2.Account(
            account_id=row.account_id, kind=KIND_TO_PROTO[AccountKind(row.kind)], currency=row.currency, owner=row.owner
        )
        message.created_at.FromDatetime(row.created_at)
        return message


async def _account_row(connection: AsyncConnection, account_id: str) -> sa.Row[Any]:
    row = (await connection.execute(sa.select(accounts).where(accounts.c.account_id == account_id))).first()
    if row is None:
        raise NotFound(f"account {account_id} does not exist")
    return row


def _balance(account: Account) -> ledger_pb2.Balance:
    return ledger_pb2.Balance(
        account_id=account.account_id,
        currency=account.currency,
        balance_minor=account.balance_minor,
        held_minor=account.held_minor,
        available_minor=account.available_minor,
    )


def grpc_service(database: Database) -> GrpcService:
    return GrpcService.of(
        LedgerServiceServicer(database),
        ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
        # No service of ours calls another's API (they talk through events): external clients only.
        {
            "OpenAccount": Rule.clients("ledger:admin"),
            "Deposit": Rule.clients("ledger:admin"),
            "GetBalance": Rule.clients("ledger:read"),
            "GetStatement": Rule.clients("ledger:read"),
        },
    )
