"""The restore drill: a backup taken while purchases run, the cluster's data destroyed, the
cluster rebuilt from the backup and restarted. Every purchase acknowledged before the backup is
there and ends, money and stock are conserved, nothing is done twice, and the nightly
reconciliation finds nothing wrong. What was acknowledged after the backup is lost (the RPO) and
the time from an empty disk to a serving cluster is the RTO: both are measured and printed."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from paysaga.ops.cluster.localcluster import ClusterPorts, LocalCluster
from tests.e2e.shop import Purchase, Shop, status_name
from tests.e2e.test_saga import PRICE, settled

pytestmark = pytest.mark.e2e
SETTINGS = {"payments": {"PAYSAGA_SAGA_TIMEOUT_S": "15", "PAYSAGA_VELOCITY_LIMIT": "1000"}}
PAYERS = 6
WORKERS = 3
LOAD_AROUND_BACKUP_S = 1.0
TOOL_TIMEOUT_S = 120
PACE_S = 0.05


@contextlib.asynccontextmanager
async def shop_of(cluster: LocalCluster) -> AsyncIterator[Shop]:
    shop = Shop(cluster)
    try:
        yield shop
    finally:
        await shop.close()


async def run_tool(command: list[str]) -> tuple[int, str]:
    """A command's exit status and output, without blocking the loop (the load keeps running)."""
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), TOOL_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def purchases_until(shop: Shop, purchases: list[Purchase], stop: asyncio.Event) -> list[tuple[float, str]]:
    """Buy round-robin until stop: (when acknowledged, payment id) for each purchase created."""
    made: list[tuple[float, str]] = []

    async def worker(offset: int) -> None:
        index = offset
        while not stop.is_set():
            payment = await shop.pay(purchases[index % len(purchases)], amount_minor=PRICE)
            made.append((time.monotonic(), payment.payment_id))
            index += WORKERS
            await asyncio.sleep(PACE_S)  # a steady load, not a flood the admission limit turns away

    await asyncio.gather(*(worker(offset) for offset in range(WORKERS)))
    return made


async def test_a_cluster_restored_from_an_online_backup_loses_nothing_acknowledged_before_it(
    tmp_path: Path, certs_dir: Path
) -> None:
    state, backup, ports = tmp_path / "state", tmp_path / "backup", ClusterPorts.free()
    with LocalCluster(state, certs_dir, ports, environment=SETTINGS) as cluster:
        async with shop_of(cluster) as shop:
            purchases = [await shop.setup(funds_minor=PRICE * 200, stock=0) for _ in range(PAYERS)]
            stock_sku = await shop.add_item(stock=10_000)
            # Every payer buys the one well-stocked item; one of them a sold-out one (those fail).
            purchases = [Purchase(p.payer, p.merchant, stock_sku) for p in purchases[1:]] + purchases[:1]
            stop = asyncio.Event()
            load = asyncio.create_task(purchases_until(shop, purchases, stop))
            await asyncio.sleep(LOAD_AROUND_BACKUP_S)
            backup_started = time.monotonic()
            code, output = await run_tool(cluster.backup_command("backup", str(backup)))
            backup_finished = time.monotonic()
            assert code == 0, output
            await asyncio.sleep(LOAD_AROUND_BACKUP_S)
            stop.set()
            made = await load
            for _, payment_id in made:  # the cluster as it was: everything ends before the disaster
                await shop.finish(payment_id)
    print(output)
    before = [payment_id for at, payment_id in made if at < backup_started]
    after = [payment_id for at, payment_id in made if at > backup_finished]
    assert before and after, "purchases ran on both sides of the backup"

    code, output = await run_tool(cluster.backup_command("backup", "--verify", str(backup)))
    assert code == 0, output
    for gone in ("data", "jetstream"):  # the disaster: every database and stream gone
        shutil.rmtree(state / gone)

    restore_started = time.monotonic()
    with LocalCluster(state, certs_dir, ports, services=()) as bare_nats:
        code, output = await run_tool(bare_nats.backup_command("restore", str(backup)))
    assert code == 0, output
    print(output)
    with LocalCluster(state, certs_dir, ports, environment=SETTINGS) as cluster:
        rto_s = time.monotonic() - restore_started
        async with shop_of(cluster) as shop:
            endings = {payment_id: status_name(await shop.finish(payment_id)) for payment_id in before}
            assert set(endings.values()) <= {"COMPLETED", "FAILED"}, endings
            lost = 0
            for payment_id in after:
                try:
                    await shop.payment(payment_id)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
                    lost += 1
            await settled(shop)
            statuses = [status_name(await shop.payment(payment_id)) for payment_id in before]
            assert statuses.count("COMPLETED") > 0 and statuses.count("FAILED") > 0
        code, output = await run_tool(cluster.reconcile_command("--until", "now", "--no-publish"))
        assert code == 0, output
    print(
        f"restore drill: {len(before)} purchases acknowledged before the backup, all there; "
        f"{lost} of {len(after)} acknowledged after it lost (RPO: everything after the backup); "
        f"RTO {rto_s:.1f} s from empty disks to a serving cluster"
    )
