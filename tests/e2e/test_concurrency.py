"""Many payments at once on one wallet, one SKU, or two accounts paying each other: nothing is
overdrawn or oversold, no conflict reaches a client, on SQLite and on PostgreSQL with replicas."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from paysaga.ledger.v1 import ledger_pb2
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.runtime.storage.database import create_engine
from tests.e2e.conftest import backend_cluster
from tests.e2e.shop import TERMINAL, Purchase, Shop, status_name
from tests.e2e.test_saga import settled

pytestmark = pytest.mark.e2e
PURCHASES = 200
PRICE = 100
# No rule or deadline may decide these outcomes: only funds and stock.
UNLIMITED = {
    "PAYSAGA_SAGA_TIMEOUT_S": "300",
    "PAYSAGA_MAX_AMOUNT_MINOR": "1000000000",
    "PAYSAGA_VELOCITY_LIMIT": "1000000",
    "PAYSAGA_MAX_IN_FLIGHT": "1000000",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql-2-replicas"])
def busy_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs_dir: Path
) -> Iterator[LocalCluster]:
    with backend_cluster(request, tmp_path_factory.mktemp("busy"), certs_dir, UNLIMITED) as cluster:
        yield cluster


@pytest.fixture
async def busy_shop(busy_cluster: LocalCluster) -> AsyncIterator[Shop]:
    client = Shop(busy_cluster)
    yield client
    await client.close()


async def pay_all(shop: Shop, purchases: list[Purchase]) -> Counter[tuple[str, str]]:
    created = await asyncio.gather(*(shop.pay(purchase, amount_minor=PRICE) for purchase in purchases))
    # Poll gently: 200 tight pollers would be most of the load the services see.
    finished = await asyncio.gather(
        *(shop.wait_for(payment.payment_id, TERMINAL, timeout_s=240, poll_s=0.5) for payment in created)
    )
    return Counter((status_name(payment), payment.reason.split(":")[0]) for payment in finished)


async def test_one_wallet_funded_for_fifty_completes_exactly_fifty_and_never_goes_negative(busy_shop: Shop) -> None:
    purchase = await busy_shop.setup(funds_minor=50 * PRICE, stock=PURCHASES, price_minor=PRICE)
    lowest_available: list[int] = []
    done = asyncio.Event()

    async def watch_balance() -> None:
        while not done.is_set():
            lowest_available.append((await busy_shop.balance(purchase.payer))[2])
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_balance())
    try:
        outcomes = await pay_all(busy_shop, [purchase] * PURCHASES)
    finally:
        done.set()
        await watcher

    assert outcomes == Counter({("COMPLETED", ""): 50, ("FAILED", "insufficient funds"): PURCHASES - 50})
    assert await busy_shop.balance(purchase.payer) == (0, 0, 0)
    assert await busy_shop.balance(purchase.merchant) == (50 * PRICE, 0, 50 * PRICE)
    assert len(lowest_available) > 10 and min(lowest_available) >= 0
    await settled(busy_shop, timeout_s=120)
    assert await busy_shop.stock(purchase.sku) == (PURCHASES - 50, 0, 50)


async def test_one_sku_with_thirty_sells_exactly_thirty_and_releases_every_other_hold(busy_shop: Shop) -> None:
    sku = await busy_shop.add_item(30, PRICE)
    merchant = await busy_shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT)
    payers = [await busy_shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, PRICE) for _ in range(PURCHASES)]

    outcomes = await pay_all(busy_shop, [Purchase(payer, merchant, sku) for payer in payers])

    assert outcomes == Counter({("COMPLETED", ""): 30, ("FAILED", "out of stock"): PURCHASES - 30})
    assert await busy_shop.stock(sku) == (0, 0, 30)
    balances = [await busy_shop.balance(payer) for payer in payers]
    assert Counter(balances) == Counter({(0, 0, 0): 30, (PRICE, 0, PRICE): PURCHASES - 30})
    assert await busy_shop.balance(merchant) == (30 * PRICE, 0, 30 * PRICE)
    await settled(busy_shop, timeout_s=120)


async def test_opposite_payments_between_two_accounts_finish_without_errors_reaching_clients(busy_shop: Shop) -> None:
    # Each capture locks both accounts; the ledger locks them in id order, so A->B and B->A at the
    # same moment cannot deadlock. Any conflict that does occur is retried inside, never returned.
    deadlocks_before = await ledger_deadlocks(busy_shop)
    a = await busy_shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT, 100 * PRICE)
    b = await busy_shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT, 100 * PRICE)
    sku = await busy_shop.add_item(200, PRICE)
    pairs = [Purchase(a, b, sku), Purchase(b, a, sku)] * 100

    outcomes = await pay_all(busy_shop, pairs)

    assert outcomes == Counter({("COMPLETED", ""): 200})
    assert await busy_shop.balance(a) == (100 * PRICE, 0, 100 * PRICE)
    assert await busy_shop.balance(b) == (100 * PRICE, 0, 100 * PRICE)
    await settled(busy_shop, timeout_s=120)
    # Retried deadlocks would also end well: make sure there were none (the lock order works).
    assert await ledger_deadlocks(busy_shop) == deadlocks_before


async def ledger_deadlocks(shop: Shop) -> int:
    """Deadlocks PostgreSQL detected in the ledger's database so far (0 on SQLite, which has none)."""
    url = shop.cluster.database_url("ledger")
    if not url.startswith("postgresql"):
        return 0
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            count = await connection.scalar(
                sa.text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            )
    finally:
        await engine.dispose()
    return int(count or 0)
