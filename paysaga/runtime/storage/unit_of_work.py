"""Transactions with the outbox and the inbox: how a service changes state and emits events.

A handler opens ``database.transaction()``, loads and changes its rows, and calls ``emit()``
for every event the change produces; the events are written to the outbox table in the same
transaction, so a state change and its events commit together or not at all. A consumer also
records the id of the event it handled in the inbox table in that transaction, which makes
handling idempotent: a redelivered event finds its id and is skipped.

On SQLite, one writer at a time: write transactions take a process-wide lock and start with
``BEGIN IMMEDIATE`` (other processes wait up to the busy timeout instead of failing on commit);
see paysaga.runtime.storage.backends for what else differs between the databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, overload

import sqlalchemy as sa
from google.protobuf.message import Message
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typing_extensions import TypeVar

from paysaga.core.eventing import EventEnvelope, new_event, subject_of
from paysaga.runtime.storage.backends import backend_of
from paysaga.runtime.storage.database import is_retryable
from paysaga.runtime.storage.prepared import Parameters, Prepared, Rows, StatementRunner

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
        # What retention prunes by (paysaga.runtime.storage.retention).
        sa.Index("ix_inbox_processed_at", "processed_at"),
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
    """The outbox and inbox statements, built once per database: those of every transaction
    prepared (paysaga.runtime.storage.prepared), the relay's found in SQLAlchemy's compiled cache
    by the cache key it memoizes on a statement built once."""

    def __init__(self, outbox: sa.Table, inbox: sa.Table) -> None:
        self.insert_outbox = Prepared(outbox.insert())
        self.processed = Prepared(
            sa.select(inbox.c.event_id).where(inbox.c.event_id.in_(sa.bindparam("ids", expanding=True)))
        )
        self.insert_inbox = Prepared(inbox.insert())
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
    """One write transaction: its connection, and the events it emits (written to the outbox at
    commit). A service's own unit (a subclass) adds its repositories, bound to this connection, in
    the style of ``unit.payments.load(payment_id)``."""

    connection: AsyncConnection
    database: Database[UnitOfWork]
    emitted: list[EventEnvelope] = field(default_factory=list)
    written: list[OutboxRow] = field(default_factory=list)
    # How run() runs prepared statements: the backend's shortcut, set when the transaction begins.
    runner: StatementRunner = field(init=False)

    def __post_init__(self) -> None:
        self.runner = StatementRunner(self.connection)

    async def run(self, prepared: Prepared, parameters: Parameters) -> Rows:
        """A hot statement (see paysaga.runtime.storage.prepared), in this transaction."""
        return await self.runner.run(prepared, parameters)

    def now(self) -> dt.datetime:
        """The database's clock (injected: the saga simulator and tests can run their own)."""
        return self.database.clock()

    async def serialize(self, key: str) -> None:
        """Until commit, nobody else (in any process) gets past serialize(key) for the same key."""
        await self.database.backend.serialize(self.connection, key)

    def emit(
        self, payload: Message, *, cause: EventEnvelope | None = None, saga_id: str = "", tier: str | None = None
    ) -> None:
        """A new event of this service's, in the saga (and SLA tier) of the event that caused it,
        or of saga_id (and tier); written with the transaction's other events at its end."""
        if cause is not None:
            saga_id = saga_id or cause.saga_id
        if not saga_id:
            raise ValueError(f"{payload.DESCRIPTOR.name} needs a saga: a cause or a saga_id")
        if not self.database.producer:
            raise ValueError("this database has no producer: Database(..., producer=<service>) emits its events")
        self.emitted.append(
            new_event(
                producer=self.database.producer,
                saga_id=saga_id,
                causation_id=cause.event_id if cause is not None else "",
                sla_tier=tier if tier is not None else (cause.sla_tier if cause is not None else ""),
                payload=payload,
                now=self.now(),
            )
        )

    def emit_envelope(self, envelope: EventEnvelope) -> None:
        """An event built elsewhere (e.g. relayed), added to the outbox as it is."""
        self.emitted.append(envelope)

    async def write_outbox(self) -> None:
        if not self.emitted:
            return
        now = self.now()
        statements = self.database.statements
        self.written = [
            OutboxRow(envelope.event_id, subject_of(envelope), envelope.SerializeToString(deterministic=True))
            for envelope in self.emitted
        ]
        await self.run(
            statements.insert_outbox,
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
        rows = await self.run(self.database.statements.processed, {"ids": list(event_ids)})
        return {row.event_id for row in rows}

    async def record_all_processed(self, envelopes: Sequence[EventEnvelope]) -> None:
        now = self.now()
        await self.run(
            self.database.statements.insert_inbox,
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


class Repository:
    """A service's repository, bound to one unit of work: it reads and writes on the unit's
    connection and takes "now" from the unit's clock."""

    def __init__(self, unit: UnitOfWork) -> None:
        self._unit = unit
        self._connection = unit.connection


U = TypeVar("U", bound=UnitOfWork, default=UnitOfWork, covariant=True)
# How a Database makes its unit of work: the service's UnitOfWork class.
UnitFactory = Callable[[AsyncConnection, "Database[UnitOfWork]"], U]


class Database(Generic[U]):
    """A service's engine and its write discipline; tells listeners after each commit.

    unit is the service's UnitOfWork class (with its repositories), producer the name its events
    carry, clock what "now" is in its transactions."""

    @overload
    def __init__(
        self: Database[UnitOfWork],
        engine: AsyncEngine,
        metadata: sa.MetaData,
        *,
        producer: str = "",
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None: ...

    @overload
    def __init__(
        self,
        engine: AsyncEngine,
        metadata: sa.MetaData,
        unit: UnitFactory[U],
        *,
        producer: str = "",
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None: ...

    def __init__(
        self,
        engine: AsyncEngine,
        metadata: sa.MetaData,
        unit: UnitFactory[Any] = UnitOfWork,
        *,
        producer: str = "",
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.engine = engine
        self.backend = backend_of(engine)
        self.producer = producer
        self.clock = clock
        self.outbox = metadata.tables["outbox"]
        self.inbox = metadata.tables["inbox"]
        self.statements = MessagingStatements(self.outbox, self.inbox)
        self._unit = unit
        self._commit_listeners: list[Callable[[U], None]] = []

    @property
    def single_writer(self) -> bool:
        """One write transaction at a time (SQLite): group commit pays, and blocks nobody it could deadlock with."""
        return self.backend.single_writer

    def on_commit(self, listener: Callable[[U], None]) -> None:
        """Told after each commit, with the unit of work that committed (unit.written: the outbox
        rows it wrote, often none)."""
        self._commit_listeners.append(listener)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[U]:
        """A write transaction; commits when the block ends, rolls back if it raises. Refused at
        once (ReplicaUnavailable) while the synchronous standby a commit would wait for is gone."""
        await self.backend.admit_write(self.engine)
        async with self.backend.write_turn(), self.backend.writing(self.engine) as (connection, runner):
            unit = self._unit(connection, self)
            unit.runner = runner
            yield unit
            await unit.write_outbox()
        for listener in self._commit_listeners:
            listener(unit)

    async def retrying(self, work: Callable[[U], Awaitable[T]]) -> T:
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
            await self.backend.snapshot(connection)
            async with connection.begin():
                yield connection
