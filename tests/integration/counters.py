"""A table of named counters beside the outbox and inbox: what the transaction tests write."""

from __future__ import annotations

import sqlalchemy as sa

from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import Database, messaging_tables

metadata = sa.MetaData()
messaging_tables(metadata)
counters = sa.Table(
    "counters", metadata, sa.Column("name", sa.String(16), primary_key=True), sa.Column("value", sa.Integer)
)


async def open_database(url: str) -> Database:
    """A Database on url with the tables created."""
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    return Database(engine, metadata)
