"""The ledger gRPC servicer: thin, proto in, handler call, proto out.

Every RPC answers UNIMPLEMENTED with a clear message until the saga lands.
"""

from __future__ import annotations

import grpc

from paysaga.grpc_server import GrpcService, not_yet_available
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc


class LedgerServiceServicer(ledger_pb2_grpc.LedgerServiceServicer):
    async def OpenAccount(
        self, request: ledger_pb2.OpenAccountRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Account:
        await not_yet_available(context, "OpenAccount")

    async def Deposit(
        self, request: ledger_pb2.DepositRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.DepositResponse:
        await not_yet_available(context, "Deposit")

    async def GetBalance(
        self, request: ledger_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Balance:
        await not_yet_available(context, "GetBalance")

    async def GetStatement(
        self, request: ledger_pb2.GetStatementRequest, context: grpc.aio.ServicerContext
    ) -> ledger_pb2.Statement:
        await not_yet_available(context, "GetStatement")


def grpc_service() -> GrpcService:
    return GrpcService.of(
        LedgerServiceServicer(),
        ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server,
    )
