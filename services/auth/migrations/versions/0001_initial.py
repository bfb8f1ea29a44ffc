"""The authorization server's first schema: clients, tokens, outbox and inbox.

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
        "oauth_clients",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("refresh_tokens", sa.Boolean, nullable=False),
        sa.Column("rate_limits", sa.Text, nullable=False),
        sa.Column("access_token_lifetime_s", sa.Integer, nullable=False),
        sa.Column("refresh_token_lifetime_s", sa.Integer, nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "oauth_tokens",
        sa.Column("token_key", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("family_id", sa.String(36), nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("certificate_thumbprint", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_oauth_tokens_client_id", "oauth_tokens", ["client_id"])
    op.create_index("ix_oauth_tokens_family_id", "oauth_tokens", ["family_id"])
