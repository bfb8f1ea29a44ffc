"""The inventory gRPC servicer: thin, proto in, handler call, proto out.

Every RPC answers UNIMPLEMENTED with a clear message until the saga lands.
"""

from __future__ import annotations

import grpc

from paysaga.grpc_server import GrpcService, not_yet_available
from paysaga.inventory.v1 import inventory_pb2, inventory_pb2_grpc


class InventoryServiceServicer(inventory_pb2_grpc.InventoryServiceServicer):
    async def AddItem(
        self, request: inventory_pb2.AddItemRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        await not_yet_available(context, "AddItem")

    async def ReceiveStock(
        self, request: inventory_pb2.ReceiveStockRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        await not_yet_available(context, "ReceiveStock")

    async def GetItem(
        self, request: inventory_pb2.GetItemRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        await not_yet_available(context, "GetItem")

    async def ListItems(
        self, request: inventory_pb2.ListItemsRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.ListItemsResponse:
        await not_yet_available(context, "ListItems")


def grpc_service() -> GrpcService:
    return GrpcService.of(
        InventoryServiceServicer(),
        inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
    )
