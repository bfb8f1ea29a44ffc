"""Runs inside the reconcile container (piped into `python -`): what may the reconciliation's
PostgreSQL role do? It connects as the container's own settings say: its database URLs (role
"reconcile", TLS with verify-full) and its certificate through libpq's PGSSL* variables.

Prints one JSON object. For each database the reconciliation reads: the tables it found and how
reading each fared, and how a DELETE fared in a plain transaction (the role's default is
read-only) and in one made READ WRITE (then only the grants stand in the way); every transaction
is rolled back. For auth's database: how connecting fared. An outcome is "ok" or "refused: <why>".
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

READ = ("payments", "ledger", "inventory")
NOT_READ = "auth"
URL_VARIABLE = "PAYSAGA_RECONCILE_PAYMENTS_DATABASE_URL"
TIMEOUT_S = 10


def url_of(database: str) -> URL:
    return make_url(os.environ[URL_VARIABLE]).set(database=database)


def on_table(verb: str, table: str) -> str:
    """verb FROM table, the table's name quoted (it is one the server listed)."""
    return f"{verb} FROM " + '"' + table.replace('"', '""') + '"'


def refusal(error: BaseException) -> str:
    cause = error.orig if isinstance(error, DBAPIError) else error
    return f"refused: {(str(cause).splitlines() or [repr(cause)])[0]}"


async def outcome(connection: AsyncConnection, *statements: str) -> str:
    """Run statements in one transaction, rolled back in any case."""
    try:
        for statement in statements:
            await connection.execute(text(statement))
    except DBAPIError as error:
        return refusal(error)
    finally:
        await connection.rollback()
    return "ok"


async def examine(database: str) -> dict[str, object]:
    engine = create_async_engine(url_of(database), poolclass=NullPool, connect_args={"timeout": TIMEOUT_S})
    try:
        async with engine.connect() as connection:
            listed = await connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
            )
            tables = [str(name) for name in listed.scalars()]
            await connection.rollback()
            reads = {table: await outcome(connection, on_table("SELECT count(*)", table)) for table in tables}
            found: dict[str, object] = {"tables": reads}
            if tables:
                delete = on_table("DELETE", tables[0])
                found["write_default"] = await outcome(connection, delete)
                found["write_read_write"] = await outcome(connection, "SET TRANSACTION READ WRITE", delete)
            return found
    finally:
        await engine.dispose()


async def connects(database: str) -> str:
    engine = create_async_engine(url_of(database), poolclass=NullPool, connect_args={"timeout": TIMEOUT_S})
    try:
        async with engine.connect():
            return "ok"
    except (DBAPIError, OSError) as error:
        return refusal(error)
    finally:
        await engine.dispose()


async def main() -> int:
    results: dict[str, object] = {database: await examine(database) for database in READ}
    results[NOT_READ] = await connects(NOT_READ)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
