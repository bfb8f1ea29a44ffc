"""A consistent online copy of one service's database, and putting it back.

SQLite: the backup API copies the file page by page inside one read transaction, so the copy is
the database as of one commit, taken while the service keeps writing. PostgreSQL: pg_dump reads
inside one snapshot (custom format); pg_restore puts it back in one transaction.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from paysaga.ops.cluster.postgres import find_binaries
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import messaging_tables

TOOL_TIMEOUT_S = 3600


class DatabaseBackupError(Exception):
    """A copy or a restore failed; the message carries the tool's own words."""


@dataclass(frozen=True)
class Strategy:
    """How one kind of database is copied, checked and put back."""

    kind: str
    suffix: str

    def copy(self, url: str, file: Path) -> None:
        raise NotImplementedError

    def check(self, file: Path) -> None:
        """Raise DatabaseBackupError unless the copy reads back whole."""
        raise NotImplementedError

    def restore(self, file: Path, url: str) -> None:
        raise NotImplementedError


class SQLiteStrategy(Strategy):
    def copy(self, url: str, file: Path) -> None:
        source = sqlite3.connect(f"file:{_sqlite_path(url)}?mode=ro", uri=True)
        target = sqlite3.connect(file)
        try:
            source.backup(target)  # all pages in one step: one read transaction, one commit's state
            # One self-contained file (no write-ahead log beside it), whatever the source used.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
            source.close()

    def check(self, file: Path) -> None:
        # immutable: read as it is, creating nothing beside it.
        connection = sqlite3.connect(f"file:{file}?mode=ro&immutable=1", uri=True)
        try:
            verdict = connection.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.DatabaseError as error:
            verdict = str(error)
        finally:
            connection.close()
        if verdict != "ok":
            raise DatabaseBackupError(f"{file}: integrity check says {verdict}")

    def restore(self, file: Path, url: str) -> None:
        target = Path(_sqlite_path(url))
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(target.name + ".restoring")
        staged.unlink(missing_ok=True)
        self.copy(f"sqlite:///{file}", staged)
        # The old database's write-ahead log belongs to the old file: it must not be replayed on the new one.
        for leftover in ("-wal", "-shm", "-journal"):
            target.with_name(target.name + leftover).unlink(missing_ok=True)
        staged.replace(target)


class PostgreSQLStrategy(Strategy):
    def copy(self, url: str, file: Path) -> None:
        _run("pg_dump", "--format=custom", "--file", str(file), "--dbname", _libpq_url(url))

    def check(self, file: Path) -> None:
        _run("pg_restore", "--list", str(file))

    def restore(self, file: Path, url: str) -> None:
        _run(
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--dbname",
            _libpq_url(url),
            str(file),
        )


STRATEGIES = {"sqlite": SQLiteStrategy("sqlite", ".db"), "postgresql": PostgreSQLStrategy("postgresql", ".dump")}


def strategy_for(url: str) -> Strategy:
    backend = make_url(url).get_backend_name()
    if backend not in STRATEGIES:
        raise DatabaseBackupError(f"cannot back up a {backend!r} database ({url})")
    return STRATEGIES[backend]


def strategy_of_kind(kind: str) -> Strategy:
    return STRATEGIES[kind]


async def copy(url: str, file: Path) -> None:
    await asyncio.to_thread(strategy_for(url).copy, url, file)


async def rearm_outbox(url: str, since: dt.datetime) -> int:
    """Mark the outbox rows published at or after since as not published, so the service's relay
    publishes them again (each with its own event id: a consumer that has it already skips it);
    returns how many."""
    outbox, _ = messaging_tables(sa.MetaData())
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(
                outbox.update().where(outbox.c.published_at >= since).values(published_at=None)
            )
            return int(result.rowcount or 0)
    finally:
        await engine.dispose()


def _sqlite_path(url: str) -> str:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise DatabaseBackupError(f"not a SQLite file: {url}")
    return database


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL as libpq takes it (no driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(program: str, *args: str) -> None:
    try:
        binary = find_binaries() / program
    except Exception as error:  # noqa: BLE001 - said as a backup error: the operator's to fix
        raise DatabaseBackupError(str(error)) from None
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    if result.returncode != 0:
        raise DatabaseBackupError(f"{program} failed: {(result.stderr or result.stdout).strip()}")
