"""The payments tables. The schema itself is created and changed by migrations/."""

from __future__ import annotations

import sqlalchemy as sa

from paysaga.runtime.storage.unit_of_work import messaging_tables

metadata = sa.MetaData()
outbox, inbox = messaging_tables(metadata)

payments = sa.Table(
    "payments",
    metadata,
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
    # The client that asked for the payment. A key is that client's own: another client's key can
    # neither collide nor be probed.
    sa.Column("requested_by", sa.String(200), nullable=False, server_default=""),
    # Where the purchase is made (ISO 3166-1 alpha-2), or "".
    sa.Column("region", sa.String(2), nullable=False, server_default=""),
    # A review declined it (it ends REJECTED once the hold is released).
    sa.Column("declined", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("requested_by", "idempotency_key", name="uq_payments_client_idempotency_key"),
    sa.Index("ix_payments_payer_created", "payer_account_id", "created_at"),
    sa.Index("ix_payments_status_deadline", "status", "deadline_at"),
)

# One row per status change: what WatchPayment streams, so no change is ever skipped.
payment_history = sa.Table(
    "payment_history",
    metadata,
    sa.Column("payment_id", sa.String(36), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
)

# Who owns which account and who sells which item: payments' copy of what the ledger
# (AccountOpened) and inventory (ItemAdded) decided, to check a purchase before it starts.
account_owners = sa.Table(
    "account_owners",
    metadata,
    sa.Column("account_id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("owner_client", sa.String(200), nullable=False),
    sa.Index("ix_account_owners_owner_client", "owner_client"),  # ListPayments: a client's accounts
)
item_sellers = sa.Table(
    "item_sellers",
    metadata,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("owner_client", sa.String(200), nullable=False),
)

# What the fraud rules decided at each CreatePayment, written with the payment: the rule set's
# sha256, the action, the score, what would have been with the shadow rules, and every input the
# rules were given (what a backtest replays).
payment_decisions = sa.Table(
    "payment_decisions",
    metadata,
    sa.Column("decision_number", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("payment_id", sa.String(36), nullable=False, unique=True),
    sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rule_set_sha256", sa.String(64), nullable=False),
    sa.Column("action", sa.String(8), nullable=False),
    sa.Column("shadow_action", sa.String(8), nullable=False),
    sa.Column("score", sa.BigInteger, nullable=False),
    sa.Column("hits", sa.Text, nullable=False),  # JSON: the rules that fired, their inputs and reasons
    sa.Column("inputs", sa.Text, nullable=False),  # JSON: every input of every rule
    sa.Index("ix_payment_decisions_decided_at", "decided_at"),
)
# One row per rule that fired, to find the decisions a rule took part in.
decision_hits = sa.Table(
    "decision_hits",
    metadata,
    sa.Column("payment_id", sa.String(36), primary_key=True),
    sa.Column("rule_id", sa.String(64), primary_key=True),
    sa.Column("shadow", sa.Boolean, nullable=False),
    sa.Index("ix_decision_hits_rule_id", "rule_id"),
)
