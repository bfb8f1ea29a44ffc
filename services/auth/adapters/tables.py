"""The authorization server's tables. The schema itself is created and changed by migrations/."""

from __future__ import annotations

import sqlalchemy as sa

from paysaga.runtime.storage.unit_of_work import messaging_tables

metadata = sa.MetaData()
outbox, inbox = messaging_tables(metadata)

clients = sa.Table(
    "oauth_clients",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("refresh_tokens", sa.Boolean, nullable=False),
    sa.Column("rate_limits", sa.Text, nullable=False),
    sa.Column("access_token_lifetime_s", sa.Integer, nullable=False),
    sa.Column("refresh_token_lifetime_s", sa.Integer, nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
)

# Every token issued, access tokens by jti and refresh tokens by hash; a family is one
# client_credentials grant and every token refreshed from it.
tokens = sa.Table(
    "oauth_tokens",
    metadata,
    sa.Column("token_key", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False, index=True),
    sa.Column("family_id", sa.String(36), nullable=False, index=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("certificate_thumbprint", sa.String(64), nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)
