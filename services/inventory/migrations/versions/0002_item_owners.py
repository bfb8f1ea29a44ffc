"""Every item has a selling client.

Items added before are nobody's: only ops may stock them, and only ops may sell them.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("owner_client", sa.String(200), nullable=False, server_default=""))
