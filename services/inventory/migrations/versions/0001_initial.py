"""Items, reservations, stock receipts, outbox and inbox.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

from paysaga.runtime.storage.migrations import create_messaging_tables

revision = "0001"
down_revision = None


def upgrade() -> None:
    create_messaging_tables()
    op.create_table(
        "items",
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
    )
    op.create_table(
        "reservations",
        sa.Column("reservation_id", sa.String(36), primary_key=True),
        sa.Column("payment_id", sa.String(36), nullable=False, unique=True),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "receipts",
        sa.Column("receipt_id", sa.String(36), primary_key=True),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
