"""The payments gRPC servicer: thin, proto in, handler call, proto out.

Every RPC answers UNIMPLEMENTED with a clear message until the saga lands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from paysaga.grpc_server import GrpcService, not_yet_available
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc


class PaymentServiceServicer(payments_pb2_grpc.PaymentServiceServicer):
    async def CreatePayment(
        self, request: payments_pb2.CreatePaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreatePaymentResponse:
        await not_yet_available(context, "CreatePayment")

    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        await not_yet_available(context, "GetPayment")

    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListPaymentsResponse:
        await not_yet_available(context, "ListPayments")

    async def WatchPayment(
        self, request: payments_pb2.WatchPaymentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[payments_pb2.PaymentUpdate]:
        await not_yet_available(context, "WatchPayment")
        yield payments_pb2.PaymentUpdate()  # unreachable; makes this an async generator like the real stream

    async def CancelPayment(
        self, request: payments_pb2.CancelPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        await not_yet_available(context, "CancelPayment")

    async def RefundPayment(
        self, request: payments_pb2.RefundPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        await not_yet_available(context, "RefundPayment")


def grpc_service() -> GrpcService:
    return GrpcService.of(
        PaymentServiceServicer(),
        payments_pb2.DESCRIPTOR.services_by_name["PaymentService"],
        payments_pb2_grpc.add_PaymentServiceServicer_to_server,
    )
