"""The refusals that need the database, driven through each service's own handlers and views on
both backends: the error a client gets (the gRPC layer maps its class to the status), and every
table exactly as it was (rows, outbox, inbox: nothing half-applied, no event emitted)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from paysaga.core.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound
from paysaga.core.validation import PageRequest
from paysaga.ops.cluster.postgres import ThrowawayPostgres
from paysaga.runtime.storage import migrations
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.group_commit import GroupCommit
from paysaga.runtime.storage.unit_of_work import Database
from services.inventory import handlers as inventory
from services.inventory.adapters import tables as inventory_tables
from services.inventory.adapters import views as inventory_views
from services.inventory.adapters.repository import InventoryUnit
from services.inventory.domain import Item
from services.ledger import handlers as ledger
from services.ledger.adapters import tables as ledger_tables
from services.ledger.adapters import views as ledger_views
from services.ledger.adapters.repository import LedgerUnit
from services.ledger.domain import MAX_BALANCE_MINOR, Account, AccountKind
from services.payments import handlers as payments
from services.payments.adapters import tables as payments_tables
from services.payments.adapters import views as payments_views
from services.payments.adapters.repository import PaymentsUnit
from services.payments.domain import Payment, PaymentLimits, PurchaseRequest

SERVICES = Path(__file__).parents[2] / "services"
UNKNOWN = "9b2f4c1e-0d7a-4e3b-8c5f-6a1d2e3f4b5c"
LIMITS = PaymentLimits()


@dataclass
class Services:
    payments: Database[PaymentsUnit]
    ledger: Database[LedgerUnit]
    inventory: Database[InventoryUnit]
    payer: str
    merchant: str
    sku: str
    payment_id: str
    receipt_id: str
    deposit_id: str

    def all(self) -> list[Database[Any]]:
        return [self.payments, self.ledger, self.inventory]


@pytest.fixture(params=["sqlite", "postgresql"])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    """The three services' databases, migrated, with a wallet, a shop, a SKU and a payment."""
    urls = {}
    for name in ("payments", "ledger", "inventory"):
        if request.param == "sqlite":
            urls[name] = f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"
        else:
            server: ThrowawayPostgres = request.getfixturevalue("postgres")
            urls[name] = server.create_database(f"{name}_{uuid.uuid4().hex[:12]}")

    async def migrated(name: str) -> AsyncEngine:
        engine = create_engine(urls[name])
        await migrations.upgrade(engine, SERVICES / name / "migrations")
        return engine

    payments_db = Database(await migrated("payments"), payments_tables.metadata, PaymentsUnit, producer="payments")
    ledger_db = Database(await migrated("ledger"), ledger_tables.metadata, LedgerUnit, producer="ledger")
    inventory_db = Database(await migrated("inventory"), inventory_tables.metadata, InventoryUnit, producer="inventory")
    payer, merchant, receipt_id, deposit_id = (str(uuid.uuid4()) for _ in range(4))
    await ledger_db.retrying(lambda unit: ledger.open_account(unit, Account(payer, AccountKind.WALLET, "EUR", "w")))
    await ledger_db.retrying(
        lambda unit: ledger.open_account(unit, Account(merchant, AccountKind.MERCHANT, "EUR", "m"))
    )
    await ledger_db.retrying(lambda unit: ledger.deposit(unit, payer, 1000, "EUR", deposit_id))
    await inventory_db.retrying(lambda unit: inventory.add_item(unit, Item("mug", "Mug", 100, "EUR")))
    await inventory_db.retrying(lambda unit: inventory.receive_stock(unit, "mug", 2, receipt_id))
    first = PurchaseRequest("key-1", payer, merchant, "mug", 1, 100, "EUR", 1)
    payment, _ = await payments_db.retrying(lambda unit: payments.create_payment(unit, first, LIMITS))
    shop = Services(
        payments_db, ledger_db, inventory_db, payer, merchant, "mug", payment.payment_id, receipt_id, deposit_id
    )
    try:
        yield shop
    finally:
        for database in shop.all():
            await database.engine.dispose()


async def contents(database: Database[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order."""
    async with database.read() as connection:
        names = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for name in sorted(names):
            rows: sa.CursorResult[Any] = await connection.execute(
                sa.select(sa.literal_column("*")).select_from(sa.table(name))
            )
            tables[name] = sorted(tuple(map(str, row)) for row in rows)
        return tables


Refusal = Callable[[Services], Awaitable[object]]

# (what is asked, the error's class, its message; {payer}, {payment} and {sku} stand for the fixture's ids)
CASES: list[tuple[str, Refusal, type[DomainError], str]] = [
    (
        "GetPayment of an unknown payment",
        lambda s: payments_views.payment(s.payments, UNKNOWN),
        NotFound,
        f"payment {UNKNOWN} does not exist",
    ),
    (
        "CancelPayment of an unknown payment",
        lambda s: s.payments.retrying(lambda unit: payments.cancel_payment(unit, UNKNOWN, "")),
        NotFound,
        f"payment {UNKNOWN} does not exist",
    ),
    (
        "RefundPayment of an unknown payment",
        lambda s: s.payments.retrying(lambda unit: payments.refund_payment(unit, UNKNOWN, "")),
        NotFound,
        f"payment {UNKNOWN} does not exist",
    ),
    (
        "RefundPayment of a payment still in flight",
        lambda s: s.payments.retrying(lambda unit: payments.refund_payment(unit, s.payment_id, "")),
        FailedPrecondition,
        "payment {payment} is PENDING; only COMPLETED payments can be refunded",
    ),
    (
        "CreatePayment reusing a key for another purchase",
        lambda s: s.payments.retrying(
            lambda unit: payments.create_payment(
                unit, PurchaseRequest("key-1", s.payer, s.merchant, "mug", 2, 200, "EUR", 1), LIMITS
            )
        ),
        FailedPrecondition,
        "idempotency_key 'key-1' was already used by this payer for a different payment; "
        "use a new key for a new payment",
    ),
    (
        "OpenAccount again with other details",
        lambda s: s.ledger.retrying(
            lambda unit: ledger.open_account(unit, Account(s.payer, AccountKind.WALLET, "EUR", "someone else"))
        ),
        AlreadyExists,
        "account {payer} already exists, with other details",
    ),
    (
        "Deposit in another currency",
        lambda s: s.ledger.retrying(lambda unit: ledger.deposit(unit, s.payer, 10, "USD", str(uuid.uuid4()))),
        FailedPrecondition,
        "account {payer} holds EUR, not USD",
    ),
    (
        "Deposit to an unknown account",
        lambda s: s.ledger.retrying(lambda unit: ledger.deposit(unit, UNKNOWN, 10, "EUR", str(uuid.uuid4()))),
        NotFound,
        f"account {UNKNOWN} does not exist",
    ),
    (
        "Deposit reusing a deposit id for another amount",
        lambda s: s.ledger.retrying(lambda unit: ledger.deposit(unit, s.payer, 999, "EUR", s.deposit_id)),
        FailedPrecondition,
        "deposit_id {deposit} was already used for a different deposit",
    ),
    (
        "Deposit over the balance limit",
        lambda s: s.ledger.retrying(
            lambda unit: ledger.deposit(unit, s.payer, MAX_BALANCE_MINOR, "EUR", str(uuid.uuid4()))
        ),
        FailedPrecondition,
        f"deposit would take account {{payer}} over {MAX_BALANCE_MINOR}",
    ),
    (
        "GetBalance of an unknown account",
        lambda s: ledger_views.account(s.ledger, UNKNOWN),
        NotFound,
        f"account {UNKNOWN} does not exist",
    ),
    (
        "GetStatement of an unknown account",
        lambda s: ledger_views.statement_page(s.ledger, UNKNOWN, PageRequest(10, 0)),
        NotFound,
        f"account {UNKNOWN} does not exist",
    ),
    (
        "AddItem again with other details",
        lambda s: s.inventory.retrying(lambda unit: inventory.add_item(unit, Item("mug", "Cup", 100, "EUR"))),
        AlreadyExists,
        "SKU {sku} already exists, with other details",
    ),
    (
        "ReceiveStock of an unknown SKU",
        lambda s: s.inventory.retrying(
            lambda unit: inventory.receive_stock(unit, "nothing-here", 1, str(uuid.uuid4()))
        ),
        NotFound,
        "SKU nothing-here does not exist",
    ),
    (
        "ReceiveStock reusing a receipt id for another quantity",
        lambda s: s.inventory.retrying(lambda unit: inventory.receive_stock(unit, "mug", 5, s.receipt_id)),
        FailedPrecondition,
        "receipt_id {receipt} was already used for a different receipt",
    ),
    (
        "GetItem of an unknown SKU",
        lambda s: inventory_views.item(s.inventory, "nothing-here"),
        NotFound,
        "SKU nothing-here does not exist",
    ),
]


@pytest.mark.parametrize(("asked", "refuse", "error", "message"), CASES, ids=[case[0] for case in CASES])
async def test_a_refused_command_says_why_and_changes_nothing(
    services: Services, asked: str, refuse: Refusal, error: type[DomainError], message: str
) -> None:
    before = [await contents(database) for database in services.all()]
    with pytest.raises(error) as refused:
        await refuse(services)
    expected = message.format(
        payer=services.payer,
        payment=services.payment_id,
        sku=services.sku,
        deposit=services.deposit_id,
        receipt=services.receipt_id,
    )
    assert str(refused.value) == expected
    assert [await contents(database) for database in services.all()] == before


async def test_an_identical_retry_is_a_replay_not_a_refusal(services: Services) -> None:
    """What the refusals above are not: the same command again returns what the first did."""
    before = [await contents(database) for database in services.all()]
    again = PurchaseRequest("key-1", services.payer, services.merchant, "mug", 1, 100, "EUR", 1)
    payment, replayed = await services.payments.retrying(lambda unit: payments.create_payment(unit, again, LIMITS))
    account, deposit_replayed = await services.ledger.retrying(
        lambda unit: ledger.deposit(unit, services.payer, 1000, "EUR", services.deposit_id)
    )
    item = await services.inventory.retrying(lambda unit: inventory.add_item(unit, Item("mug", "Mug", 100, "EUR")))
    assert (payment.payment_id, replayed, deposit_replayed) == (services.payment_id, True, True)
    assert (account.balance_minor, item.quantity_available) == (1000, 2)
    assert [await contents(database) for database in services.all()] == before


async def test_a_refused_purchase_in_a_shared_commit_leaves_nothing_and_the_others_commit(services: Services) -> None:
    """Purchases arriving together share one transaction on SQLite, each in a savepoint: the one
    refused (a reused key) must leave no row and no event, the others must all be stored."""
    group: GroupCommit[PaymentsUnit, tuple[Payment, bool]] = GroupCommit(services.payments)
    commits: list[int] = []
    services.payments.on_commit(lambda written: commits.append(len(written)))
    reused = PurchaseRequest("key-1", services.payer, services.merchant, "mug", 2, 200, "EUR", 1)
    requests = [
        PurchaseRequest(f"key-{index}", services.payer, services.merchant, "mug", 1, 100, "EUR", 1)
        for index in range(2, 6)
    ]
    requests.insert(2, reused)

    def create(request: PurchaseRequest) -> Callable[[PaymentsUnit], Awaitable[tuple[Payment, bool]]]:
        return lambda unit: payments.create_payment(unit, request, LIMITS)

    outcomes = await asyncio.gather(*(group.run(create(request)) for request in requests), return_exceptions=True)

    refused = outcomes.pop(2)
    assert isinstance(refused, FailedPrecondition)
    stored = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
    assert len(stored) == 4, outcomes
    async with services.payments.read() as connection:
        keys = {row.idempotency_key for row in await connection.execute(sa.select(payments_tables.payments))}
        events = list(await connection.execute(sa.select(payments_tables.outbox.c.saga_id)))
    assert keys == {"key-1", "key-2", "key-3", "key-4", "key-5"}
    assert sorted(row.saga_id for row in events) == sorted(
        [services.payment_id] + [payment.payment_id for payment, _ in stored]
    ), "one PaymentRequested per stored purchase, none for the refused one"
    # On SQLite they shared commits; on PostgreSQL each has its own transaction.
    assert sum(commits) == 4 and (len(commits) < 5 if services.payments.single_writer else len(commits) == 4)
