"""Prepared statements give what SQLAlchemy's own execution gives, on a real SQLite file and a
real PostgreSQL server: same rows, same types, same errors, same transaction."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.prepared import Prepared, SQLiteRunner, StatementRunner
from paysaga.runtime.storage.unit_of_work import Database, messaging_tables

metadata = sa.MetaData()
messaging_tables(metadata)
things = sa.Table(
    "things",
    metadata,
    sa.Column("thing_id", sa.String(36), primary_key=True),
    sa.Column("quantity", sa.BigInteger, nullable=False),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", sa.String(50), nullable=True),
)
_INSERT = Prepared(things.insert())
_UPDATE = Prepared(things.update().where(things.c.thing_id == sa.bindparam("b_thing_id")))
_LOAD_SOME = Prepared(
    sa.select(things).where(things.c.thing_id.in_(sa.bindparam("ids", expanding=True))).order_by(things.c.thing_id)
)
_FLAGGED = Prepared(sa.select(things.c.thing_id).where(things.c.flag.is_(True), things.c.note == "three"))
_COUNT = Prepared(sa.select(sa.func.count()).select_from(things).where(things.c.quantity >= sa.bindparam("least")))
SEEN_AT = dt.datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=dt.UTC)


async def open_database(url: str) -> Database:
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    return Database(engine, metadata)


def rows_of(count: int) -> list[dict[str, object]]:
    return [
        {"thing_id": f"t{n}", "quantity": n, "flag": n % 2 == 0, "seen_at": SEEN_AT, "note": None if n else "zero"}
        for n in range(count)
    ]


async def test_prepared_statements_read_and_write_what_sqlalchemy_does(database_url: str) -> None:
    database = await open_database(database_url)
    async with database.transaction() as unit:
        if database_url.startswith("sqlite"):
            assert isinstance(unit.runner, SQLiteRunner)  # the shortcut is taken where it exists
        await unit.run(_INSERT, rows_of(4))
        await unit.run(_UPDATE, [{"b_thing_id": "t1", "quantity": 10}, {"b_thing_id": "t2", "quantity": 20}])
        changed = await unit.run(_UPDATE, {"b_thing_id": "t3", "flag": True, "note": "three"})
        assert changed.rowcount == 1
        prepared = (await unit.run(_LOAD_SOME, {"ids": ["t3", "t0", "t1", "missing"]})).all()
        counted = (await unit.run(_COUNT, {"least": 10})).first()
        flagged = [row.thing_id for row in await unit.run(_FLAGGED, {})]  # the statement's own values
        # The same, the way SQLAlchemy runs it, in the same transaction.
        plain = (await StatementRunner(unit.connection).run(_LOAD_SOME, {"ids": ["t3", "t0", "t1", "missing"]})).all()

    assert [tuple(row) for row in prepared] == [tuple(row) for row in plain]
    assert [(row.thing_id, row.quantity, row.flag, row.note) for row in prepared] == [
        ("t0", 0, True, "zero"),
        ("t1", 10, False, None),
        ("t3", 3, True, "three"),
    ]
    assert all(row.seen_at.replace(tzinfo=dt.UTC) == SEEN_AT for row in prepared)
    assert counted is not None and counted[0] == 2
    assert flagged == ["t3"]
    async with database.read() as connection:
        stored = {row.thing_id: row.quantity for row in await connection.execute(sa.select(things))}
    assert stored == {"t0": 0, "t1": 10, "t2": 20, "t3": 3}
    await database.engine.dispose()


async def test_a_prepared_write_that_fails_raises_as_sqlalchemy_does_and_rolls_back(database_url: str) -> None:
    database = await open_database(database_url)
    with pytest.raises(IntegrityError):
        async with database.transaction() as unit:
            await unit.run(_INSERT, rows_of(2))
            await unit.run(_INSERT, rows_of(1))  # t0 again: the primary key refuses it
    async with database.read() as connection:
        assert await connection.scalar(sa.select(sa.func.count()).select_from(things)) == 0  # nothing half-applied
    await database.engine.dispose()


def test_a_statement_whose_defaults_sqlalchemy_would_compute_is_refused() -> None:
    with_default = sa.Table(
        "with_default",
        sa.MetaData(),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("n", sa.Integer, default=7),
    )
    from sqlalchemy.dialects.sqlite import aiosqlite

    with pytest.raises(ValueError, match="Python-side defaults"):
        Prepared(with_default.insert()).compiled(aiosqlite.dialect(), frozenset({"id"}))


async def test_an_empty_in_list_matches_nothing_as_with_sqlalchemy(database_url: str) -> None:
    database = await open_database(database_url)
    async with database.transaction() as unit:
        await unit.run(_INSERT, rows_of(2))
        assert (await unit.run(_LOAD_SOME, {"ids": []})).all() == []
        assert await unit.processed_among([]) == set()
    await database.engine.dispose()
