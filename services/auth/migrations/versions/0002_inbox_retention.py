"""The inbox is pruned by age: an index on the time each event was processed.

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_index("ix_inbox_processed_at", "inbox", ["processed_at"])
