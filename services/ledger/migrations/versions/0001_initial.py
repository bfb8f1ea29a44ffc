"""Accounts, holds, the double-entry journal, statements, outbox and inbox.

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
        "accounts",
        sa.Column("account_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("balance_minor", sa.BigInteger, nullable=False),
        sa.Column("held_minor", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "holds",
        sa.Column("hold_id", sa.String(36), primary_key=True),
        sa.Column("payment_id", sa.String(36), nullable=False, unique=True),
        sa.Column("payer_account_id", sa.String(36), nullable=False),
        sa.Column("merchant_account_id", sa.String(36), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "journal_entries",
        sa.Column("entry_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "journal_lines",
        sa.Column("line_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entry_id", sa.String(36), sa.ForeignKey("journal_entries.entry_id"), nullable=False),
        sa.Column("account_id", sa.String(36), sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_journal_lines_entry_id", "journal_lines", ["entry_id"])
    op.create_table(
        "statement_lines",
        sa.Column("line_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(36), sa.ForeignKey("accounts.account_id"), nullable=False),
        sa.Column("entry_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_minor", sa.BigInteger, nullable=False),
        sa.Column("balance_after_minor", sa.BigInteger, nullable=False),
        sa.Column("held_after_minor", sa.BigInteger, nullable=False),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("description", sa.String(300), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_statement_lines_account", "statement_lines", ["account_id", "line_id"])
