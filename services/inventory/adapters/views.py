"""Inventory's read queries: each in a read-only snapshot, none of them locks."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from paysaga.core.errors import NotFound
from paysaga.core.validation import PageRequest
from paysaga.runtime.storage.pages import page
from paysaga.runtime.storage.unit_of_work import Database
from services.inventory.adapters.tables import items

_ITEM = sa.select(items).where(items.c.sku == sa.bindparam("sku"))


async def item(database: Database, sku: str) -> Any:
    async with database.read() as connection:
        row = (await connection.execute(_ITEM, {"sku": sku})).first()
    if row is None:
        raise NotFound(f"SKU {sku} does not exist")
    return row


async def items_page(database: Database, request: PageRequest) -> tuple[list[Any], str]:
    """A page of items in the order they were added; and the next page's token."""
    async with database.read() as connection:
        found = await page(connection, sa.select(items), items.c.item_number, request)
    return found.rows, found.next_page_token
