"""Each service's schema is managed by Alembic migrations in services/<name>/migrations and
brought up to date at every start, before the service serves anything.

Every migrations folder has the same two-line env.py (``from paysaga.runtime.storage.migrations import
run_in_alembic; run_in_alembic()``), and versions/ with the service's revisions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from paysaga.runtime.storage.backends import backend_of

log = logging.getLogger(__name__)
# Any constant shared by all replicas of a service (each service has its own database).
MIGRATION_LOCK_KEY = 0x70617973


def _config(script_location: Path, connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, script_location: Path) -> None:
    """Apply every migration not yet applied, in one transaction where the backend allows it."""
    async with engine.connect() as connection, backend_of(engine).exclusive(connection, MIGRATION_LOCK_KEY):
        # Replicas starting together: one migrates, the others wait, then find nothing to do.
        before = await connection.run_sync(_current_revision)
        await connection.run_sync(lambda sync: command.upgrade(_config(script_location, sync), "head"))
        await connection.commit()
        after = await connection.run_sync(_current_revision)
    if before != after:
        log.info("database.migrated", extra={"from_revision": before, "to_revision": after})


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def run_in_alembic() -> None:
    """The body of every env.py: run the migrations on the connection upgrade() handed over."""
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def create_messaging_tables() -> None:
    """Revision 1 of the outbox and inbox tables (paysaga.runtime.storage.unit_of_work), for a
    service's first migration."""
    from alembic import op

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_outbox_unpublished", "outbox", ["published_at", "id"])
    op.create_table(
        "inbox",
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
