"""The inventory gRPC servicer: thin, proto in, handler call, proto out."""

from __future__ import annotations

from typing import Any

import grpc
import sqlalchemy as sa

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import validation
from paysaga.core.errors import NotFound
from paysaga.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from paysaga.runtime.grpc_server import GrpcService, domain_errors_as_status
from paysaga.runtime.security.authz import Rule
from paysaga.runtime.storage.unit_of_work import Database
from services.inventory import handlers
from services.inventory.adapters.repository import QUANTITIES
from services.inventory.adapters.tables import items
from services.inventory.domain import Item


class InventoryServiceServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, database: Database) -> None:
        self._database = database

    @domain_errors_as_status
    async def AddItem(
        self, request: inventory_pb2.AddItemRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        item = Item(
            validation.sku(request.sku),
            validation.text(request.name, "name", required=True),
            validation.positive_amount(request.unit_price.amount_minor, "unit_price.amount_minor"),
            validation.currency(request.unit_price.currency, "unit_price.currency"),
        )
        await self._database.retrying(lambda unit: handlers.add_item(unit, item))
        return await self._item(item.sku)

    @domain_errors_as_status
    async def ReceiveStock(
        self, request: inventory_pb2.ReceiveStockRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        sku = validation.sku(request.sku)
        quantity = validation.positive_quantity(request.quantity)
        receipt_id = validation.uuid_text(request.receipt_id, "receipt_id")
        await self._database.retrying(lambda unit: handlers.receive_stock(unit, sku, quantity, receipt_id))
        return await self._item(sku)

    @domain_errors_as_status
    async def GetItem(
        self, request: inventory_pb2.GetItemRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.Item:
        return await self._item(validation.sku(request.sku))

    @domain_errors_as_status
    async def ListItems(
        self, request: inventory_pb2.ListItemsRequest, context: grpc.aio.ServicerContext
    ) -> inventory_pb2.ListItemsResponse:
        size = validation.page_size(request.page_size)
        after = validation.page_token(request.page_token)
        async with self._database.read() as connection:
            rows = (
                await connection.execute(
                    sa.select(items).where(items.c.item_number > after).order_by(items.c.item_number).limit(size + 1)
                )
            ).all()
        response = inventory_pb2.ListItemsResponse(items=[item_message(row) for row in rows[:size]])
        response.next_page_token = validation.next_page_token(rows, size, "item_number")
        return response

    async def _item(self, sku: str) -> inventory_pb2.Item:
        async with self._database.read() as connection:
            row = (await connection.execute(sa.select(items).where(items.c.sku == sku))).first()
        if row is None:
            raise NotFound(f"SKU {sku} does not exist")
        return item_message(row)


def item_message(row: Any) -> inventory_pb2.Item:
    message = inventory_pb2.Item(
        sku=row.sku,
        name=row.name,
        unit_price=Money(amount_minor=row.unit_price_minor, currency=row.currency),
        **{name: getattr(row, name) for name in QUANTITIES},
    )
    message.created_at.FromDatetime(row.created_at)
    message.updated_at.FromDatetime(row.updated_at)
    return message


def grpc_service(database: Database) -> GrpcService:
    return GrpcService.of(
        InventoryServiceServicer(database),
        inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"],
        inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
        # No service of ours calls another's API (they talk through events): external clients only.
        {
            "AddItem": Rule.clients("inventory:admin"),
            "ReceiveStock": Rule.clients("inventory:admin"),
            "GetItem": Rule.clients("inventory:read"),
            "ListItems": Rule.clients("inventory:read"),
        },
    )
