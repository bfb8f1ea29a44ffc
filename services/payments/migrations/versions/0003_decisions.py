"""The fraud rules' decisions, the region of a purchase, and whether a review declined it.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("region", sa.String(2), nullable=False, server_default=""))
        batch.add_column(sa.Column("declined", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "payment_decisions",
        sa.Column("decision_number", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("payment_id", sa.String(36), nullable=False, unique=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rule_set_sha256", sa.String(64), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("shadow_action", sa.String(8), nullable=False),
        sa.Column("score", sa.BigInteger, nullable=False),
        sa.Column("hits", sa.Text, nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
    )
    op.create_index("ix_payment_decisions_decided_at", "payment_decisions", ["decided_at"])
    op.create_table(
        "decision_hits",
        sa.Column("payment_id", sa.String(36), primary_key=True),
        sa.Column("rule_id", sa.String(64), primary_key=True),
        sa.Column("shadow", sa.Boolean, nullable=False),
    )
    op.create_index("ix_decision_hits_rule_id", "decision_hits", ["rule_id"])
