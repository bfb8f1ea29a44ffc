"""Idempotency keys belong to the calling client; payments' copy of account and item owners.

Payments made before keep their keys, scoped to a legacy client per payer ("legacy:<payer>"), so
no two old keys can collide.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("requested_by", sa.String(200), nullable=False, server_default=""))
    op.execute("UPDATE payments SET requested_by = 'legacy:' || payer_account_id")
    with op.batch_alter_table("payments") as batch:
        batch.drop_constraint("uq_payments_payer_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_payments_client_idempotency_key", ["requested_by", "idempotency_key"])
    op.create_table(
        "account_owners",
        sa.Column("account_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner_client", sa.String(200), nullable=False),
    )
    op.create_index("ix_account_owners_owner_client", "account_owners", ["owner_client"])
    op.create_table(
        "item_sellers",
        sa.Column("sku", sa.String(64), primary_key=True),
        sa.Column("owner_client", sa.String(200), nullable=False),
    )
