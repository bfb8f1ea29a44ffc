"""The reconciliation benchmark's fixture: many finished purchases, written straight into each
service's database and stream as the services would have written them, without running them.

- Databases: each service's own SQLite file, its schema made by its own migrations; rows through
  its own table definitions (services.<service>.adapters.tables): payments, holds, journal
  entries with their lines and the accounts they move, reservations. Tables the reconciliation
  does not read (history, decisions, statements, inbox, published outbox rows) are left empty.
- Streams: each service's events stream, created with its own configuration; every event an
  EventEnvelope made by paysaga.core.eventing.new_event, on the subject and with the Nats-Msg-Id
  the outbox relay uses, in the order the saga emits them.
- Purchases end as in a day of traffic (ENDINGS and their shares), spread evenly over the window;
  the payer and merchant accounts, SKUs and amounts vary.

The same generator, at a small size, is checked to reconcile clean (tests/integration).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from google.protobuf.message import Message

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import eventing
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging import streams
from paysaga.runtime.settings import TlsFiles
from paysaga.runtime.storage import migrations
from paysaga.runtime.storage.database import create_engine as create_service_engine
from services.inventory.adapters import tables as inventory_tables
from services.ledger.adapters import tables as ledger_tables
from services.payments.adapters import tables as payments_tables

SERVICES = ("payments", "ledger", "inventory")
REPO = Path(__file__).resolve().parent.parent
# How purchases end, in shares of a hundred.
ENDINGS = (("completed", 85), ("refunded", 5), ("no funds", 4), ("no stock", 3), ("rejected", 3))
SOLD = ("PaymentRequested", "FundsHeld", "StockReserved", "FundsCaptured", "StockCommitted", "PaymentCompleted")
EVENTS = {
    "completed": SOLD,
    "refunded": (*SOLD, "PaymentRefundRequested", "FundsRefunded", "StockRestocked", "PaymentRefunded"),
    "no funds": ("PaymentRequested", "FundsHoldFailed", "PaymentFailed"),
    "no stock": ("PaymentRequested", "FundsHeld", "StockReservationFailed", "FundsReleased", "PaymentFailed"),
    "rejected": ("PaymentRejected",),
}
STATUSES = {
    "completed": ("COMPLETED", "CAPTURED", "COMMITTED"),
    "refunded": ("REFUNDED", "REFUNDED", "RESTOCKED"),
    "no funds": ("FAILED", None, "CANCELLED"),
    "no stock": ("FAILED", "RELEASED", "CANCELLED"),
    "rejected": ("REJECTED", None, None),
}
STEP = dt.timedelta(milliseconds=40)
ROWS_PER_INSERT = 5_000
PUBLISHES_IN_FLIGHT = 2_000
WALLETS = 512
MERCHANTS = 64
SKUS = 256
CURRENCY = "EUR"


@dataclass
class Fixture:
    """What was written, to check the run against."""

    sagas: int = 0
    events: dict[str, int] = field(default_factory=dict)
    # (payment id, type, amount, when): what the bank settles.
    settled: list[tuple[str, str, int, dt.datetime]] = field(default_factory=list)


@dataclass
class Rows:
    payments: list[dict[str, object]] = field(default_factory=list)
    holds: list[dict[str, object]] = field(default_factory=list)
    entries: list[dict[str, object]] = field(default_factory=list)
    lines: list[dict[str, object]] = field(default_factory=list)
    reservations: list[dict[str, object]] = field(default_factory=list)
    # (producer, subject, message id, bytes)
    events: list[tuple[str, str, str, bytes]] = field(default_factory=list)


def endings(count: int, rng: random.Random) -> list[str]:
    names = [name for name, _ in ENDINGS]
    return rng.choices(names, weights=[share for _, share in ENDINGS], k=count)


def payload(
    event_type: str, payment_id: str, sku: str, amount_minor: int, hold_id: str, reservation_id: str
) -> Message:
    money = Money(amount_minor=amount_minor, currency=CURRENCY)
    message_type = getattr(events_pb2, event_type)
    fields: dict[str, object] = {"payment_id": payment_id}
    if event_type in ("PaymentRequested", "FundsHeld"):
        fields |= {"sku": sku, "quantity": 1, "amount": money}
    if event_type in ("PaymentRejected", "FundsCaptured", "FundsRefunded"):
        fields["amount"] = money
    if event_type in ("FundsHeld", "FundsCaptured", "FundsReleased"):
        fields["hold_id"] = hold_id
    if event_type in ("StockReserved", "StockCommitted", "StockReleased"):
        fields["reservation_id"] = reservation_id
    if event_type in ("StockReserved", "StockRestocked"):
        fields |= {"sku": sku, "quantity": 1}
    if event_type in ("PaymentRejected", "FundsHoldFailed", "StockReservationFailed", "FundsReleased", "PaymentFailed"):
        fields["reason"] = "refused"
    message: Message = message_type(**fields)
    return message


def saga_rows(
    rows: Rows, ending: str, created_at: dt.datetime, rng: random.Random, accounts: Sequence[str]
) -> tuple[str, int, dict[str, dt.datetime]]:
    """One purchase's rows and events; its id, amount and when it was captured and refunded."""
    payment_id, hold_id, reservation_id = (str(uuid.uuid4()) for _ in range(3))
    payer, merchant = accounts[rng.randrange(WALLETS)], accounts[WALLETS + rng.randrange(MERCHANTS)]
    sku = f"sku-{rng.randrange(SKUS)}"
    amount_minor = rng.randrange(100, 50_000)
    event_types = EVENTS[ending]
    ended_at = created_at + STEP * len(event_types)
    status, hold_status, reservation_status = STATUSES[ending]
    previous = ""
    moved: dict[str, dt.datetime] = {}
    for index, event_type in enumerate(event_types):
        producer = eventing.PRODUCER_OF[event_type]
        envelope = eventing.new_event(
            producer=producer,
            saga_id=payment_id,
            payload=payload(event_type, payment_id, sku, amount_minor, hold_id, reservation_id),
            causation_id=previous,
            sla_tier="standard",
            now=created_at + STEP * index,
        )
        previous = envelope.event_id
        rows.events.append((producer, eventing.subject_of(envelope), envelope.event_id, envelope.SerializeToString()))
        if event_type in ("FundsCaptured", "FundsRefunded"):
            entry_id = str(uuid.uuid4())
            kind = "CAPTURE" if event_type == "FundsCaptured" else "REFUND"
            moment = created_at + STEP * index
            moved[kind.lower()] = moment
            rows.entries.append(
                {"entry_id": entry_id, "kind": kind, "saga_id": payment_id, "request_hash": None, "created_at": moment}
            )
            sign = 1 if kind == "CAPTURE" else -1
            rows.lines.append({"entry_id": entry_id, "account_id": payer, "amount_minor": -sign * amount_minor})
            rows.lines.append({"entry_id": entry_id, "account_id": merchant, "amount_minor": sign * amount_minor})
    rows.payments.append(
        {
            "payment_id": payment_id,
            "idempotency_key": payment_id,
            "request_hash": "0" * 64,
            "payer_account_id": payer,
            "merchant_account_id": merchant,
            "sku": sku,
            "quantity": 1,
            "amount_minor": amount_minor,
            "currency": CURRENCY,
            "sla_tier": 3,
            "status": status,
            "reason": "" if status in ("COMPLETED", "REFUNDED") else "refused",
            "version": len(event_types),
            "timed_out": False,
            "created_at": created_at,
            "updated_at": ended_at,
            "deadline_at": created_at + dt.timedelta(seconds=30),
            "requested_by": "spiffe://paysaga/client/bench",
            "region": "",
            "declined": False,
        }
    )
    if hold_status is not None:
        rows.holds.append(
            {
                "hold_id": hold_id,
                "payment_id": payment_id,
                "payer_account_id": payer,
                "merchant_account_id": merchant,
                "amount_minor": amount_minor,
                "currency": CURRENCY,
                "status": hold_status,
                "updated_at": ended_at,
            }
        )
    if reservation_status is not None:
        tombstone = reservation_status == "CANCELLED"
        rows.reservations.append(
            {
                "reservation_id": str(uuid.uuid4()) if tombstone else reservation_id,
                "payment_id": payment_id,
                "sku": "" if tombstone else sku,
                "quantity": 0 if tombstone else 1,
                "status": reservation_status,
                "updated_at": ended_at,
            }
        )
    return payment_id, amount_minor, moved


def database_path(data_dir: Path, service: str) -> Path:
    return data_dir / f"{service}.db"


async def migrate(data_dir: Path) -> None:
    for service in SERVICES:
        engine = create_service_engine(f"sqlite+aiosqlite:///{database_path(data_dir, service)}")
        try:
            await migrations.upgrade(engine, REPO / "services" / service / "migrations")
        finally:
            await engine.dispose()


def accounts_rows(now: dt.datetime) -> tuple[list[str], list[dict[str, object]]]:
    ids = [str(uuid.uuid4()) for _ in range(WALLETS + MERCHANTS)]
    rows: list[dict[str, object]] = [
        {
            "account_id": account_id,
            "kind": "WALLET" if index < WALLETS else "MERCHANT",
            "currency": CURRENCY,
            "owner": "bench",
            "balance_minor": 0,
            "held_minor": 0,
            "created_at": now,
            "owner_client": "",
        }
        for index, account_id in enumerate(ids)
    ]
    return ids, rows


def _chunks(rows: list[dict[str, object]]) -> Iterator[list[dict[str, object]]]:
    for start in range(0, len(rows), ROWS_PER_INSERT):
        yield rows[start : start + ROWS_PER_INSERT]


def write_databases(data_dir: Path, rows: Rows, accounts: list[dict[str, object]]) -> None:
    """Insert through each service's own tables (a synchronous SQLite engine: same dialect)."""
    plan = {
        "payments": [(payments_tables.payments, rows.payments)],
        "ledger": [
            (ledger_tables.accounts, accounts),
            (ledger_tables.holds, rows.holds),
            (ledger_tables.journal_entries, rows.entries),
            (ledger_tables.journal_lines, rows.lines),
        ],
        "inventory": [(inventory_tables.reservations, rows.reservations)],
    }
    for service, inserts in plan.items():
        engine = sa.create_engine(f"sqlite:///{database_path(data_dir, service)}")
        try:
            with engine.begin() as connection:
                for table, table_rows in inserts:
                    for chunk in _chunks(table_rows):
                        connection.execute(table.insert(), chunk)
        finally:
            engine.dispose()


async def publish(url: str, certs_dir: Path, events: Sequence[tuple[str, str, str, bytes]]) -> dict[str, int]:
    """Into each service's stream (created as the service creates it), as that service: its own
    certificate, its own subjects. Returns the count per producer."""
    counts: dict[str, int] = {}
    for service in SERVICES:
        client = await streams.connect(url, TlsFiles.in_directory(certs_dir, service), name=service, timeout_s=30)
        try:
            jetstream = client.jetstream()
            for spec in streams.owned_streams(service):
                await streams.ensure_stream(jetstream, spec, 1)
            own = [event for event in events if event[0] == service]
            for start in range(0, len(own), PUBLISHES_IN_FLIGHT):
                await asyncio.gather(
                    *(
                        jetstream.publish(subject, data, headers={"Nats-Msg-Id": message_id}, timeout=60)
                        for _, subject, message_id, data in own[start : start + PUBLISHES_IN_FLIGHT]
                    )
                )
            counts[service] = len(own)
        finally:
            await client.close()
    return counts


async def generate(
    data_dir: Path, url: str, certs_dir: Path, sagas: int, window_end: dt.datetime, seed: int
) -> Fixture:
    """`sagas` finished purchases created over the 24 h before window_end (less a settle margin)."""
    rng = random.Random(seed)
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    await migrate(data_dir)
    account_ids, accounts = accounts_rows(window_end - dt.timedelta(days=4))
    rows = Rows()
    fixture = Fixture(sagas=sagas)
    span_s = (dt.timedelta(hours=24) - dt.timedelta(minutes=10)).total_seconds()
    start = window_end - dt.timedelta(hours=24)
    for index, ending in enumerate(endings(sagas, rng)):
        created_at = start + dt.timedelta(seconds=span_s * index / max(sagas, 1))
        payment_id, amount_minor, moved = saga_rows(rows, ending, created_at, rng, account_ids)
        fixture.settled += [(payment_id, kind, amount_minor, moment) for kind, moment in moved.items()]
    await asyncio.to_thread(write_databases, data_dir, rows, accounts)
    fixture.events = await publish(url, certs_dir, rows.events)
    return fixture
