"""Done only when every replica has it: the services on a PostgreSQL primary whose commits wait
until a synchronous standby has applied them (remote_apply). A completed payment is readable on
the standby at once; with the standby gone, purchases are refused within 2 s with a clear status
instead of hanging, and accepted again once it is back; and the promotion drill: the primary lost,
the standby promoted, the services pointed at it, nothing acknowledged lost."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from paysaga.ops.cluster.localcluster import AUTHORIZATION_SERVER, SERVICES, ClusterPorts, LocalCluster, free_port
from paysaga.ops.cluster.postgres import ThrowawayPostgres, ThrowawayStandby, primary_and_standby
from tests.e2e.shop import Purchase, Shop, status_name
from tests.e2e.test_saga import PRICE, settled

pytestmark = pytest.mark.e2e
REFUSED_WITHIN_S = 2.0
RECOVERY_TIMEOUT_S = 30.0


@pytest.fixture
def replicated(postgres: ThrowawayPostgres) -> Iterator[tuple[ThrowawayPostgres, ThrowawayStandby]]:
    """A primary with a synchronous standby, servers of their own (postgres: only to know the
    binaries are there)."""
    with primary_and_standby(free_port(), free_port()) as servers:
        yield servers


async def payment_status_on(server: ThrowawayPostgres, database: str, payment_id: str) -> str | None:
    engine = create_async_engine(server.url(database))
    try:
        async with engine.connect() as connection:
            query = sa.text("SELECT status FROM payments WHERE payment_id = :id")
            return (await connection.execute(query, {"id": payment_id})).scalar_one_or_none()
    finally:
        await engine.dispose()


async def refused_in(shop: Shop, purchase: Purchase, key: str) -> float:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await shop.pay(purchase, amount_minor=PRICE, key=key)
    elapsed_s = time.monotonic() - started
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "synchronous standby" in (refused.value.details() or "")
    return elapsed_s


async def accepted_again(shop: Shop, purchase: Purchase, key: str) -> str:
    """The client retries with the same idempotency key: one purchase, whether or not the refused
    attempt was stored (UNAVAILABLE leaves that open, as any failed call does)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        try:
            return (await shop.pay(purchase, amount_minor=PRICE, key=key)).payment_id
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, error
            await asyncio.sleep(0.2)


async def test_a_synchronous_standby_has_every_payment_and_takes_over(
    replicated: tuple[ThrowawayPostgres, ThrowawayStandby], tmp_path: Path, certs_dir: Path
) -> None:
    primary, standby = replicated
    names = {service: f"{service}_{uuid.uuid4().hex[:8]}" for service in (*SERVICES, AUTHORIZATION_SERVER)}
    environment = {service: {"PAYSAGA_DATABASE_URL": primary.create_database(name)} for service, name in names.items()}
    with LocalCluster(tmp_path / "state", certs_dir, ClusterPorts.free(), environment=environment) as cluster:
        shop = Shop(cluster)
        try:
            purchase = await shop.setup(funds_minor=PRICE * 10, stock=10)
            first = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)
            assert status_name(first) == "COMPLETED"
            # remote_apply: the commit returned once the standby had applied it.
            assert await payment_status_on(standby, names["payments"], first.payment_id) == "COMPLETED"

            standby.halt(("fast",))
            key = str(uuid.uuid4())
            elapsed_s = await refused_in(shop, purchase, key)
            print(f"with the standby gone, a purchase was refused in {elapsed_s:.2f} s")
            assert elapsed_s < REFUSED_WITHIN_S
            standby.resume()
            second = await accepted_again(shop, purchase, key)
            assert status_name(await shop.finish(second)) == "COMPLETED"

            # The promotion drill: the primary is lost (as in a crash), the standby takes over.
            acknowledged = [(await shop.pay(purchase, amount_minor=PRICE)).payment_id for _ in range(3)]
            primary.halt(("immediate",))
            standby.promote()
            for service, name in names.items():
                cluster.environment[service]["PAYSAGA_DATABASE_URL"] = standby.url(name)
                for instance in cluster.instances(service):
                    cluster.kill(instance)
                    cluster.start_service(instance)
            for service in names:
                for instance in cluster.instances(service):
                    cluster.wait_serving(instance)
            for payment_id in [first.payment_id, second, *acknowledged]:
                assert status_name(await shop.finish(payment_id)) == "COMPLETED", payment_id
            third = await shop.finish((await shop.pay(purchase, amount_minor=PRICE)).payment_id)
            assert status_name(third) == "COMPLETED"
            assert await shop.balance(purchase.payer) == (PRICE * 4, 0, PRICE * 4)
            await settled(shop)
        finally:
            await shop.close()
