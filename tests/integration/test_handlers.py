"""The refusals that need the database, driven through each service's own handlers and views on
both backends: the error a client gets (the gRPC layer maps its class to the status), and every
table exactly as it was (rows, outbox, inbox: nothing half-applied, no event emitted)."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from paysaga.core.access import Caller
from paysaga.core.errors import AlreadyExists, DomainError, FailedPrecondition, NotFound, PermissionDenied
from paysaga.core.eventing import EventEnvelope
from paysaga.core.identity import client_identity
from paysaga.core.validation import PageRequest
from paysaga.ops.cluster.postgres import ThrowawayPostgres
from paysaga.runtime.messaging.consumer import apply_event
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
from services.payments.bootstrap import screening
from services.payments.domain import Payment, PaymentLimits, PurchaseRequest

SERVICES = Path(__file__).parents[2] / "services"
UNKNOWN = "9b2f4c1e-0d7a-4e3b-8c5f-6a1d2e3f4b5c"
LIMITS = PaymentLimits()
SCREEN = screening(LIMITS, time.time()).decide
CLIENT_SCOPES = frozenset(
    {"payments:read", "payments:write", "ledger:read", "ledger:write", "inventory:read", "inventory:write"}
)
ALICE = Caller(client_identity("alice"), CLIENT_SCOPES)  # owns the wallet
SHOP = Caller(client_identity("acme-shop"), CLIENT_SCOPES)  # owns the merchant account and sells the mug
MALLORY = Caller(client_identity("mallory"), CLIENT_SCOPES)  # owns a wallet of her own, nothing else
OPS = Caller(client_identity("ops"), frozenset({"payments:admin", "ledger:admin", "inventory:admin"}))


@dataclass
class Services:
    payments: Database[PaymentsUnit]
    ledger: Database[LedgerUnit]
    inventory: Database[InventoryUnit]
    payer: str
    merchant: str
    mallory: str
    mallorys_shop: str
    sku: str
    payment_id: str
    receipt_id: str
    deposit_id: str

    def all(self) -> list[Database[Any]]:
        return [self.payments, self.ledger, self.inventory]

    def buy(
        self, caller: Caller, key: str, payer: str = "", quantity: int = 1
    ) -> Callable[[PaymentsUnit], Awaitable[tuple[Payment, bool]]]:
        request = PurchaseRequest(key, payer or self.payer, self.merchant, self.sku, quantity, 100 * quantity, "EUR", 1)
        return lambda unit: payments.create_payment(unit, request, LIMITS, caller, SCREEN)


@pytest.fixture(params=["sqlite", "postgresql"])
async def services(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Services]:
    """The three services' databases, migrated: Alice's funded wallet, Mallory's, the shop's
    merchant account and its mug in stock, payments told who owns what, and Alice's first
    purchase (key-1)."""
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
    payer, merchant, mallory, mallorys_shop, receipt_id, deposit_id = (str(uuid.uuid4()) for _ in range(6))
    for account in (
        Account(payer, AccountKind.WALLET, "EUR", "w", owner_client=ALICE.identity),
        Account(mallory, AccountKind.WALLET, "EUR", "w", owner_client=MALLORY.identity),
        Account(mallorys_shop, AccountKind.MERCHANT, "EUR", "m", owner_client=MALLORY.identity),
        Account(merchant, AccountKind.MERCHANT, "EUR", "m", owner_client=SHOP.identity),
    ):
        await ledger_db.retrying(functools.partial(ledger.open_account, account=account))
    await ledger_db.retrying(lambda unit: ledger.deposit(unit, payer, 1000, "EUR", deposit_id))
    await ledger_db.retrying(lambda unit: ledger.deposit(unit, mallory, 1000, "EUR", str(uuid.uuid4())))
    mug = Item("mug", "Mug", 100, "EUR", owner_client=SHOP.identity)
    await inventory_db.retrying(lambda unit: inventory.add_item(unit, mug))
    await inventory_db.retrying(lambda unit: inventory.receive_stock(unit, "mug", 2, receipt_id, SHOP))
    await _tell_payments(payments_db, ledger_db, inventory_db)
    shop = Services(
        payments_db, ledger_db, inventory_db, payer, merchant, mallory, mallorys_shop, "mug", "", receipt_id, deposit_id
    )
    payment, _ = await payments_db.retrying(shop.buy(ALICE, "key-1"))
    shop.payment_id = payment.payment_id
    try:
        yield shop
    finally:
        for database in shop.all():
            await database.engine.dispose()


async def _tell_payments(payments_db: Database[PaymentsUnit], *producers: Database[Any]) -> None:
    """What the relay and payments' consumer would do: hand payments the events it consumes."""
    for producer in producers:
        async with producer.read() as connection:
            rows = await connection.execute(sa.select(producer.outbox.c.payload).order_by(producer.outbox.c.id))
            events = [EventEnvelope.FromString(row.payload) for row in rows]
        for event in events:
            if event.event_type in payments.EVENT_HANDLERS:
                await apply_event(payments_db, payments.EVENT_HANDLERS, event)


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
NOT_YOURS = (
    "payer_account_id {payer} is not a wallet of yours (one opened moments ago may not be known here yet: try again)"
)

# (what is asked, the error's class, its message; {payer}, {payment}, {sku}, {deposit} and
# {receipt} stand for the fixture's ids)
CASES: list[tuple[str, Refusal, type[DomainError], str]] = [
    (
        "GetPayment of an unknown payment",
        lambda s: payments_views.payment(s.payments, UNKNOWN, ALICE),
        NotFound,
        f"payment {UNKNOWN} does not exist",
    ),
    (
        "CancelPayment of an unknown payment",
        lambda s: s.payments.retrying(lambda unit: payments.cancel_payment(unit, UNKNOWN, "", ALICE)),
        NotFound,
        f"payment {UNKNOWN} does not exist",
    ),
    (
        "RefundPayment of an unknown payment",
        lambda s: s.payments.retrying(lambda unit: payments.refund_payment(unit, UNKNOWN, "", SHOP)),
        NotFound,
        f"payment {UNKNOWN} does not exist",
    ),
    (
        "RefundPayment of a payment still in flight",
        lambda s: s.payments.retrying(lambda unit: payments.refund_payment(unit, s.payment_id, "", SHOP)),
        FailedPrecondition,
        "payment {payment} is PENDING; only COMPLETED payments can be refunded",
    ),
    (
        "CreatePayment reusing a key for another purchase",
        lambda s: s.payments.retrying(s.buy(ALICE, "key-1", quantity=2)),
        FailedPrecondition,
        "idempotency_key 'key-1' was already used by this client for a different payment; "
        "use a new key for a new payment",
    ),
    # Who may touch what: another client's records are refused, and do not show.
    (
        "CreatePayment from another client's wallet",
        lambda s: s.payments.retrying(s.buy(MALLORY, "m-1")),
        PermissionDenied,
        NOT_YOURS,
    ),
    (
        "CreatePayment from an account payments never heard of (the same answer)",
        lambda s: s.payments.retrying(s.buy(MALLORY, "m-2", payer=UNKNOWN)),
        PermissionDenied,
        NOT_YOURS.replace("{payer}", UNKNOWN),
    ),
    (
        "CreatePayment paying into a wallet as if it were a merchant account",
        lambda s: s.payments.retrying(
            lambda unit: payments.create_payment(
                unit, PurchaseRequest("m-3", s.mallory, s.payer, "mug", 1, 100, "EUR", 1), LIMITS, MALLORY, SCREEN
            )
        ),
        PermissionDenied,
        "merchant_account_id {payer} is not the account of the client selling mug (one opened moments ago "
        "may not be known here yet: try again)",
    ),
    (
        "CreatePayment paying the shop's mug into another client's merchant account",
        lambda s: s.payments.retrying(
            lambda unit: payments.create_payment(
                unit, PurchaseRequest("a-9", s.payer, s.mallorys_shop, "mug", 1, 100, "EUR", 1), LIMITS, ALICE, SCREEN
            )
        ),
        PermissionDenied,
        "merchant_account_id {mallorys_shop} is not the account of the client selling mug (one opened moments "
        "ago may not be known here yet: try again)",
    ),
    (
        "GetPayment of another client's payment",
        lambda s: payments_views.payment(s.payments, s.payment_id, MALLORY),
        NotFound,
        "payment {payment} does not exist",
    ),
    (
        "CancelPayment of another client's payment",
        lambda s: s.payments.retrying(lambda unit: payments.cancel_payment(unit, s.payment_id, "", MALLORY)),
        NotFound,
        "payment {payment} does not exist",
    ),
    (
        "CancelPayment by the merchant (only the payer cancels)",
        lambda s: s.payments.retrying(lambda unit: payments.cancel_payment(unit, s.payment_id, "", SHOP)),
        NotFound,
        "payment {payment} does not exist",
    ),
    (
        "RefundPayment by the payer (only the merchant refunds)",
        lambda s: s.payments.retrying(lambda unit: payments.refund_payment(unit, s.payment_id, "", ALICE)),
        NotFound,
        "payment {payment} does not exist",
    ),
    (
        "GetBalance of another client's account",
        lambda s: ledger_views.account(s.ledger, s.payer, MALLORY),
        NotFound,
        "account {payer} does not exist",
    ),
    (
        "GetStatement of another client's account",
        lambda s: ledger_views.statement_page(s.ledger, s.payer, PageRequest(10, 0), SHOP),
        NotFound,
        "account {payer} does not exist",
    ),
    (
        "ReceiveStock for an item another client sells",
        lambda s: s.inventory.retrying(
            lambda unit: inventory.receive_stock(unit, "mug", 5, str(uuid.uuid4()), MALLORY)
        ),
        PermissionDenied,
        "SKU mug is sold by another client",
    ),
    (
        "OpenAccount again with other details",
        lambda s: s.ledger.retrying(
            lambda unit: ledger.open_account(
                unit, Account(s.payer, AccountKind.WALLET, "EUR", "w", owner_client=MALLORY.identity)
            )
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
        lambda s: ledger_views.account(s.ledger, UNKNOWN, OPS),
        NotFound,
        f"account {UNKNOWN} does not exist",
    ),
    (
        "GetStatement of an unknown account",
        lambda s: ledger_views.statement_page(s.ledger, UNKNOWN, PageRequest(10, 0), OPS),
        NotFound,
        f"account {UNKNOWN} does not exist",
    ),
    (
        "AddItem again with other details",
        lambda s: s.inventory.retrying(
            lambda unit: inventory.add_item(unit, Item("mug", "Cup", 100, "EUR", owner_client=SHOP.identity))
        ),
        AlreadyExists,
        "SKU {sku} already exists, with other details",
    ),
    (
        "ReceiveStock of an unknown SKU",
        lambda s: s.inventory.retrying(
            lambda unit: inventory.receive_stock(unit, "nothing-here", 1, str(uuid.uuid4()), OPS)
        ),
        NotFound,
        "SKU nothing-here does not exist",
    ),
    (
        "ReceiveStock reusing a receipt id for another quantity",
        lambda s: s.inventory.retrying(lambda unit: inventory.receive_stock(unit, "mug", 5, s.receipt_id, SHOP)),
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
        mallorys_shop=services.mallorys_shop,
    )
    assert str(refused.value) == expected
    assert [await contents(database) for database in services.all()] == before


async def test_an_identical_retry_is_a_replay_not_a_refusal(services: Services) -> None:
    """What the refusals above are not: the same command again returns what the first did."""
    before = [await contents(database) for database in services.all()]
    payment, replayed = await services.payments.retrying(services.buy(ALICE, "key-1"))
    account, deposit_replayed = await services.ledger.retrying(
        lambda unit: ledger.deposit(unit, services.payer, 1000, "EUR", services.deposit_id)
    )
    mug = Item("mug", "Mug", 100, "EUR", owner_client=SHOP.identity)
    item = await services.inventory.retrying(lambda unit: inventory.add_item(unit, mug))
    assert (payment.payment_id, replayed, deposit_replayed) == (services.payment_id, True, True)
    assert (account.balance_minor, item.quantity_available) == (1000, 2)
    assert [await contents(database) for database in services.all()] == before


async def test_a_refused_purchase_in_a_shared_commit_leaves_nothing_and_the_others_commit(services: Services) -> None:
    """Purchases arriving together share one transaction on SQLite, each in a savepoint: the one
    refused (a reused key) must leave no row and no event, the others must all be stored."""
    group: GroupCommit[PaymentsUnit, tuple[Payment, bool]] = GroupCommit(services.payments)
    commits: list[int] = []
    services.payments.on_commit(lambda unit: commits.append(len(unit.written)))
    works = [services.buy(ALICE, f"key-{index}") for index in range(2, 6)]
    works.insert(2, services.buy(ALICE, "key-1", quantity=2))  # a reused key: refused

    outcomes = await asyncio.gather(*(group.run(work) for work in works), return_exceptions=True)

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


async def test_keys_are_the_callers_own_and_ops_may_do_everything(services: Services) -> None:
    """Mallory's key-1 is not Alice's: a new payment of hers, not a replay nor a refusal. Ops
    may pay from any wallet, read, cancel and refund anything."""
    mine, replayed = await services.payments.retrying(services.buy(MALLORY, "key-1", payer=services.mallory))
    assert (replayed, mine.request.requested_by) == (False, MALLORY.identity)
    assert mine.payment_id != services.payment_id
    assert (await payments_views.payment(services.payments, mine.payment_id, MALLORY)).payment_id == mine.payment_id
    # The merchant sees the payment too; Alice sees hers and not Mallory's.
    assert (await payments_views.payment(services.payments, mine.payment_id, SHOP)).payment_id == mine.payment_id
    alices, _ = await payments_views.payments_page(services.payments, PageRequest(10, 0), ALICE)
    shops, _ = await payments_views.payments_page(services.payments, PageRequest(10, 0), SHOP)
    assert [p.payment_id for p in alices] == [services.payment_id]
    assert [p.payment_id for p in shops] == [services.payment_id, mine.payment_id]

    by_ops, _ = await services.payments.retrying(services.buy(OPS, "ops-1"))
    everything, _ = await payments_views.payments_page(services.payments, PageRequest(10, 0), OPS)
    assert len(everything) == 3
    cancelled = await services.payments.retrying(lambda unit: payments.cancel_payment(unit, by_ops.payment_id, "", OPS))
    assert cancelled.status.value == "CANCELLING"
    # The payer cancels her own.
    assert (
        await services.payments.retrying(lambda unit: payments.cancel_payment(unit, mine.payment_id, "", MALLORY))
    ).status.value == "CANCELLING"


async def test_the_sweeper_undoes_nothing_when_the_deadline_moved_since_it_looked(services: Services) -> None:
    async def status() -> str:
        async with services.payments.transaction() as unit:
            payment = await unit.payments.load(services.payment_id)
        assert payment is not None
        return payment.status.value

    # The sweeper saw the payment overdue; meanwhile its deadline moved (a review approved): as
    # read again under the payment's lock, it is not overdue.
    await services.payments.retrying(lambda unit: payments.time_out(unit, services.payment_id, LIMITS))
    assert await status() == "PENDING"
    await services.payments.retrying(lambda unit: payments.time_out(unit, services.payment_id, LIMITS, force=True))
    assert await status() == "CANCELLING"
