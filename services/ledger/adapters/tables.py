"""The ledger's tables. The schema itself is created and changed by migrations/."""

from __future__ import annotations

import sqlalchemy as sa

from paysaga.runtime.storage.unit_of_work import messaging_tables

metadata = sa.MetaData()
outbox, inbox = messaging_tables(metadata)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("account_id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("balance_minor", sa.BigInteger, nullable=False),
    sa.Column("held_minor", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    # The client identity that owns the account ("" for accounts only ops may use).
    sa.Column("owner_client", sa.String(200), nullable=False, server_default=""),
)

holds = sa.Table(
    "holds",
    metadata,
    sa.Column("hold_id", sa.String(36), primary_key=True),
    sa.Column("payment_id", sa.String(36), nullable=False, unique=True),
    sa.Column("payer_account_id", sa.String(36), nullable=False),
    sa.Column("merchant_account_id", sa.String(36), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

journal_entries = sa.Table(
    "journal_entries",
    metadata,
    sa.Column("entry_id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("saga_id", sa.String(36), nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

journal_lines = sa.Table(
    "journal_lines",
    metadata,
    sa.Column("line_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entry_id", sa.String(36), sa.ForeignKey("journal_entries.entry_id"), nullable=False, index=True),
    sa.Column("account_id", sa.String(36), sa.ForeignKey("accounts.account_id"), nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
)

# What a statement shows: every change of an account's balance or held amount, with both after it.
statement_lines = sa.Table(
    "statement_lines",
    metadata,
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
    sa.Index("ix_statement_lines_account", "account_id", "line_id"),
)
