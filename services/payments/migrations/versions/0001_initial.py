"""Payments, their status history, outbox and inbox.

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
        "payments",
        sa.Column("payment_number", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("payment_id", sa.String(36), nullable=False, unique=True),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("payer_account_id", sa.String(36), nullable=False),
        sa.Column("merchant_account_id", sa.String(36), nullable=False),
        sa.Column("sku", sa.String(64), nullable=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("sla_tier", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("timed_out", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("payer_account_id", "idempotency_key", name="uq_payments_payer_idempotency_key"),
    )
    op.create_index("ix_payments_payer_created", "payments", ["payer_account_id", "created_at"])
    op.create_index("ix_payments_status_deadline", "payments", ["status", "deadline_at"])
    op.create_table(
        "payment_history",
        sa.Column("payment_id", sa.String(36), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
