"""Each service's migrations build exactly the tables its code uses, on both backends: a column
added to `tables` without a migration (or the reverse) fails here, not in production."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from paysaga.runtime.storage import migrations
from paysaga.runtime.storage.database import create_engine
from services.inventory.adapters import tables as inventory_tables
from services.ledger.adapters import tables as ledger_tables
from services.payments.adapters import tables as payments_tables

REPO = Path(__file__).resolve().parents[2]
METADATA = {
    "payments": payments_tables.metadata,
    "inventory": inventory_tables.metadata,
    "ledger": ledger_tables.metadata,
}


async def drift(database_url: str, service: str, metadata: sa.MetaData) -> list[Any]:
    """What differs between the service's migrated database and metadata (empty: nothing)."""
    engine = create_engine(database_url)
    try:
        await migrations.upgrade(engine, REPO / "services" / service / "migrations")
        async with engine.connect() as connection:
            return await connection.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("service", sorted(METADATA))
async def test_the_migrations_build_exactly_the_tables_the_code_uses(database_url: str, service: str) -> None:
    assert await drift(database_url, service, METADATA[service]) == []


async def test_a_column_the_migrations_lack_is_found(database_url: str) -> None:
    planted = sa.MetaData()
    for table in METADATA["ledger"].tables.values():
        table.to_metadata(planted)
    sa.Table("accounts", planted, sa.Column("nickname", sa.String(40)), extend_existing=True)

    found = await drift(database_url, "ledger", planted)

    assert [difference[0] for difference in found] == ["add_column"]
    assert found[0][3].name == "nickname"
