"""Inventory's tables. The schema itself is created and changed by migrations/."""

from __future__ import annotations

import sqlalchemy as sa

from paysaga.runtime.storage.unit_of_work import messaging_tables

metadata = sa.MetaData()
outbox, inbox = messaging_tables(metadata)

items = sa.Table(
    "items",
    metadata,
    sa.Column("item_number", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sku", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("unit_price_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("quantity_available", sa.BigInteger, nullable=False),
    sa.Column("quantity_reserved", sa.BigInteger, nullable=False),
    sa.Column("quantity_sold", sa.BigInteger, nullable=False),
    sa.Column("quantity_received", sa.BigInteger, nullable=False),
    sa.Column("quantity_restocked_out", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # The client identity that sells the item ("" for items only ops may stock).
    sa.Column("owner_client", sa.String(200), nullable=False, server_default=""),
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("reservation_id", sa.String(36), primary_key=True),
    sa.Column("payment_id", sa.String(36), nullable=False, unique=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

receipts = sa.Table(
    "receipts",
    metadata,
    sa.Column("receipt_id", sa.String(36), primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)
