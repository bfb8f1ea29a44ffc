"""Every account has an owning client.

Accounts opened before are nobody's: only ops may use them until ops opens new ones for clients.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("owner_client", sa.String(200), nullable=False, server_default=""))
