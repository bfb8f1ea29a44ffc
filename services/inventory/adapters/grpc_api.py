"""The inventory gRPC servicer: thin, proto in, handler call, proto out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import validation
from paysaga.core.access import Caller, owner_for
from paysaga.core.validation import PageRequest
from paysaga.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from paysaga.runtime.grpc_server import GrpcService, domain_errors_as_status
from paysaga.runtime.security.authz import Rule, current_caller
from paysaga.runtime.storage.unit_of_work import Database
from services.inventory import handlers
from services.inventory.adapters import views
from services.inventory.adapters.repository import QUANTITIES, InventoryUnit
from services.inventory.domain import Item


class InventoryServiceServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, database: Database[InventoryUnit]) -> None:
        self._database = database

    @domain_errors_as_status
    async def AddItem(
        self, request: inventory_pb2.AddItemRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        item = new_item(request, current_caller())
        await self._database.retrying(lambda unit: handlers.add_item(unit, item))
        return item_message(await views.item(self._database, item.sku))

    @domain_errors_as_status
    async def ReceiveStock(
        self, request: inventory_pb2.ReceiveStockRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        receipt, caller = receipt_of(request), current_caller()
        await self._database.retrying(
            lambda unit: handlers.receive_stock(unit, receipt.sku, receipt.quantity, receipt.id, caller)
        )
        return item_message(await views.item(self._database, receipt.sku))

    @domain_errors_as_status
    async def GetItem(
        self, request: inventory_pb2.GetItemRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        return item_message(await views.item(self._database, validation.sku(request.sku)))

    @domain_errors_as_status
    async def ListItems(
        self, request: inventory_pb2.ListItemsRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.ListItemsResponse:
        rows, next_token = await views.items_page(self._database, items_query(request))
        return inventory_pb2.ListItemsResponse(items=[item_message(row) for row in rows], next_page_token=next_token)


# The request parsers: a request in, checked values out, or InvalidArgument; no I/O.


def new_item(request: inventory_pb2.AddItemRequest, caller: Caller) -> Item:
    return Item(
        validation.sku(request.sku),
        validation.text(request.name, "name", required=True),
        validation.positive_amount(request.unit_price.amount_minor, "unit_price.amount_minor"),
        validation.currency(request.unit_price.currency, "unit_price.currency"),
        owner_client=owner_for(caller, handlers.SERVICE, request.owner_client),
    )


def items_query(request: inventory_pb2.ListItemsRequest) -> PageRequest:
    return validation.page_request(request.page_size, request.page_token)


@dataclass(frozen=True)
class Receipt:
    sku: str
    quantity: int
    id: str


def receipt_of(request: inventory_pb2.ReceiveStockRequest) -> Receipt:
    return Receipt(
        validation.sku(request.sku),
        validation.positive_quantity(request.quantity),
        validation.uuid_text(request.receipt_id, "receipt_id"),
    )


def item_message(row: Any) -> inventory_pb2.Item:
    message = inventory_pb2.Item(
        sku=row.sku,
        name=row.name,
        unit_price=Money(amount_minor=row.unit_price_minor, currency=row.currency),
        owner_client=row.owner_client,
        **{name: getattr(row, name) for name in QUANTITIES},
    )
    message.created_at.FromDatetime(row.created_at)
    message.updated_at.FromDatetime(row.updated_at)
    return message


def grpc_service(database: Database[InventoryUnit]) -> GrpcService:
    return GrpcService.of(
        InventoryServiceServicer(database),
        inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
        # No service of ours calls another's API (they talk through events): external clients only.
        {
            "AddItem": Rule.clients("inventory:write"),
            "ReceiveStock": Rule.clients("inventory:write"),
            "GetItem": Rule.clients("inventory:read"),
            "ListItems": Rule.clients("inventory:read"),
        },
    )
