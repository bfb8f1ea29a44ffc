"""Transactions with the outbox and the inbox: how a service changes state and emits events.

A handler opens ``database.transaction()``, loads and changes its rows, and calls ``emit()``
for every event the change produces; the events are written to the outbox table in the same
transaction, so a state change and its events commit together or not at all. A consumer also
records the id of the event it handled in the inbox table in that transaction, which makes
handling idempotent: a redelivered event finds its id and is skipped.

On SQLite, one writer at a time: write transactions take a process-wide lock and start with
``BEGIN IMMEDIATE`` (other processes wait up to the busy timeout instead of failing on commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from paysaga.core.eventing import EventEnvelope, subject_of
from paysaga.runtime.storage.database import WRITE_OPTION, is_retryable

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_TRANSACTION_ATTEMPTS = 5


def messaging_tables(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """The outbox and inbox tables, added to a service's own metadata (created by migrations)."""
    outbox = sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Index("ix_outbox_unpublished", "published_at", "id"),
    )
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("saga_id", sa.String(36), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
    return outbox, inbox


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OutboxRow(NamedTuple):
    """What the relay publishes: the event's id (its Nats-Msg-Id), subject and bytes."""

    event_id: str
    subject: str
    payload: bytes


class MessagingStatements:
    """The outbox and inbox statements, built once per database: SQLAlchemy memoizes a statement's
    cache key, so a statement built once is found in the compiled cache without being rebuilt and
    hashed on every call."""

    def __init__(self, outbox: sa.Table, inbox: sa.Table) -> None:
        self.insert_outbox = outbox.insert()
        self.processed = sa.select(inbox.c.event_id).where(inbox.c.event_id.in_(sa.bindparam("ids", expanding=True)))
        self.insert_inbox = inbox.insert()
        self.unpublished = (
            sa.select(outbox.c.event_id, outbox.c.subject, outbox.c.payload)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(sa.bindparam("limit"))
        )
        self.mark_published = (
            outbox.update()
            .where(outbox.c.event_id.in_(sa.bindparam("event_ids", expanding=True)))
            .values(published_at=sa.bindparam("published_at"))
        )


@dataclass
class UnitOfWork:
    connection: AsyncConnection
    statements: MessagingStatements
    emitted: list[EventEnvelope] = field(default_factory=list)
    written: list[OutboxRow] = field(default_factory=list)

    async def emit(self, envelope: EventEnvelope) -> None:
        """Add an event to the outbox; written with the transaction's other events at its end."""
        self.emitted.append(envelope)

    async def write_outbox(self) -> None:
        if not self.emitted:
            return
        now = utc_now()
        self.written = [
            OutboxRow(envelope.event_id, subject_of(envelope), envelope.SerializeToString(deterministic=True))
            for envelope in self.emitted
        ]
        await self.connection.execute(
            self.statements.insert_outbox,
            [
                {
                    "event_id": row.event_id,
                    "event_type": envelope.event_type,
                    "saga_id": envelope.saga_id,
                    "subject": row.subject,
                    "payload": row.payload,
                    "created_at": now,
                }
                for envelope, row in zip(self.emitted, self.written, strict=True)
            ],
        )

    async def processed_among(self, event_ids: Sequence[str]) -> set[str]:
        """Which of these events were handled before (one query for a batch)."""
        rows = await self.connection.execute(self.statements.processed, {"ids": list(event_ids)})
        return {row.event_id for row in rows}

    async def record_all_processed(self, envelopes: Sequence[EventEnvelope]) -> None:
        now = utc_now()
        await self.connection.execute(
            self.statements.insert_inbox,
            [
                {
                    "event_id": envelope.event_id,
                    "event_type": envelope.event_type,
                    "saga_id": envelope.saga_id,
                    "processed_at": now,
                }
                for envelope in envelopes
            ],
        )


class Database:
    """A service's engine and its write discipline; tells listeners after each commit."""

    def __init__(self, engine: AsyncEngine, metadata: sa.MetaData) -> None:
        self.engine = engine
        self.outbox = metadata.tables["outbox"]
        self.inbox = metadata.tables["inbox"]
        self.statements = MessagingStatements(self.outbox, self.inbox)
        self._is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()
        self._commit_listeners: list[Callable[[list[OutboxRow]], None]] = []

    @property
    def single_writer(self) -> bool:
        """SQLite: one write transaction at a time, so a long one blocks nobody it could deadlock with."""
        return self._is_sqlite

    def on_commit(self, listener: Callable[[list[OutboxRow]], None]) -> None:
        """Told after each commit, with the outbox rows it wrote (often none)."""
        self._commit_listeners.append(listener)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[UnitOfWork]:
        """A write transaction; commits when the block ends, rolls back if it raises."""
        lock = self._write_lock if self._is_sqlite else contextlib.nullcontext()
        async with lock, self.engine.connect() as connection:
            await connection.execution_options(**{WRITE_OPTION: True})
            async with connection.begin():
                unit = UnitOfWork(connection, self.statements)
                yield unit
                await unit.write_outbox()
        for listener in self._commit_listeners:
            listener(unit.written)

    async def retrying(self, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run work in a write transaction, again (a bounded number of times) if it conflicted with a
        concurrent transaction: a deadlock, a serialization failure, or a unique key inserted
        meanwhile."""
        for attempt in range(1, MAX_TRANSACTION_ATTEMPTS + 1):
            try:
                async with self.transaction() as unit:
                    return await work(unit)
            except DBAPIError as error:
                if attempt == MAX_TRANSACTION_ATTEMPTS or not is_retryable(error):
                    raise
                log.info("transaction.retry", extra={"attempt": attempt, "error": type(error.orig).__name__})
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction (a consistent snapshot on both backends)."""
        async with self.engine.connect() as connection:
            if not self._is_sqlite:  # SQLite's BEGIN already reads one snapshot
                await connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with connection.begin():
                yield connection
