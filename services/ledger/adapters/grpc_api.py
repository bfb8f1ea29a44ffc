"""The ledger gRPC servicer: thin, proto in, handler call, proto out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import grpc

from paysaga.core import validation
from paysaga.core.access import Caller, owner_for
from paysaga.core.errors import InvalidArgument
from paysaga.core.validation import PageRequest
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.runtime.grpc_server import GrpcService, domain_errors_as_status
from paysaga.runtime.security.authz import Rule, current_caller
from paysaga.runtime.storage.unit_of_work import Database
from services.ledger import handlers
from services.ledger.adapters import views
from services.ledger.adapters.repository import LedgerUnit
from services.ledger.domain import Account, AccountKind

SERVICE = "ledger"
KINDS = {ledger_pb2.ACCOUNT_KIND_WALLET: AccountKind.WALLET, ledger_pb2.ACCOUNT_KIND_MERCHANT: AccountKind.MERCHANT}
KIND_TO_PROTO = {kind: number for number, kind in KINDS.items()}


class LedgerServiceServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(self, database: Database[LedgerUnit]) -> None:
        self._database = database

    @domain_errors_as_status
    async def OpenAccount(
        self, request: ledger_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Account:
        caller = current_caller()
        account = new_account(request, caller)
        await self._database.retrying(lambda unit: handlers.open_account(unit, account))
        _, row = await views.account(self._database, account.account_id, caller)
        message = ledger_pb2.Account(
            account_id=row.account_id,
            kind=KIND_TO_PROTO[AccountKind(row.kind)],
            currency=row.currency,
            owner=row.owner,
            owner_client=row.owner_client,
        )
        message.created_at.FromDatetime(row.created_at)
        return message

    @domain_errors_as_status
    async def Deposit(
        self, request: ledger_pb2.DepositRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.DepositResponse:
        deposit = deposit_of(request)
        account, replayed = await self._database.retrying(
            lambda unit: handlers.deposit(unit, deposit.account_id, deposit.amount_minor, deposit.currency, deposit.id)
        )
        return ledger_pb2.DepositResponse(balance=_balance(account), replayed=replayed)

    @domain_errors_as_status
    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Balance:
        account, _ = await views.account(self._database, account_id_of(request), current_caller())
        return _balance(account)

    @domain_errors_as_status
    async def GetStatement(
        self, request: ledger_pb2.GetStatementRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Statement:
        account_id, page = statement_query(request)
        account, rows, next_token = await views.statement_page(self._database, account_id, page, current_caller())
        statement = ledger_pb2.Statement(account_id=account_id, currency=account.currency, next_page_token=next_token)
        for row in rows:
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
        return statement


# The request parsers: a request in, checked values out, or InvalidArgument; no I/O.


class _HasAccountId(Protocol):
    account_id: str


def account_id_of(request: _HasAccountId) -> str:
    return validation.uuid_text(request.account_id, "account_id")


def new_account(request: ledger_pb2.OpenAccountRequest, caller: Caller) -> Account:
    if request.kind not in KINDS:
        raise InvalidArgument("kind must be ACCOUNT_KIND_WALLET or ACCOUNT_KIND_MERCHANT")
    return Account(
        account_id_of(request),
        KINDS[request.kind],
        validation.currency(request.currency),
        validation.text(request.owner, "owner", required=True),
        owner_client=owner_for(caller, SERVICE, request.owner_client),
    )


def statement_query(request: ledger_pb2.GetStatementRequest) -> tuple[str, PageRequest]:
    return account_id_of(request), validation.page_request(request.page_size, request.page_token)


@dataclass(frozen=True)
class DepositOrder:
    account_id: str
    amount_minor: int
    currency: str
    id: str


def deposit_of(request: ledger_pb2.DepositRequest) -> DepositOrder:
    account_id = account_id_of(request)
    deposit_id = validation.uuid_text(request.deposit_id, "deposit_id")
    return DepositOrder(
        account_id,
        validation.positive_amount(request.amount.amount_minor),
        validation.currency(request.amount.currency, "amount.currency"),
        deposit_id,
    )


def _balance(account: Account) -> ledger_pb2.Balance:
    return ledger_pb2.Balance(
        account_id=account.account_id,
        currency=account.currency,
        balance_minor=account.balance_minor,
        held_minor=account.held_minor,
        available_minor=account.available_minor,
    )


def grpc_service(database: Database[LedgerUnit]) -> GrpcService:
    return GrpcService.of(
        LedgerServiceServicer(database),
        ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
        # No service of ours calls another's API (they talk through events): external clients only.
        {
            "OpenAccount": Rule.clients("ledger:write"),
            "Deposit": Rule.clients("ledger:admin"),
            "GetBalance": Rule.clients("ledger:read"),
            "GetStatement": Rule.clients("ledger:read"),
        },
    )
