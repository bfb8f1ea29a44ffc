"""After every other end-to-end test has run on the shared cluster (kills, restarts, NATS and
database outages, timeouts, cancels, refunds, races), the nightly reconciliation finds nothing:
no false positive. The file name sorts last, so that pytest runs it after the others on each
backend's cluster (it keeps the file order within a parametrized package fixture)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from paysaga.ops.cluster.localcluster import LocalCluster
from tests.e2e.shop import Shop
from tests.e2e.test_reconcile import now, reconcile
from tests.e2e.test_saga import settled

pytestmark = pytest.mark.e2e
SETTLE_S = 2


async def test_the_cluster_reconciles_after_every_other_test(cluster: LocalCluster, shop: Shop, tmp_path: Path) -> None:
    await settled(shop, timeout_s=60)
    await asyncio.sleep(SETTLE_S + 0.5)
    result = reconcile(
        cluster, "--until", now().isoformat(), "--settle-s", str(SETTLE_S), "--json", str(tmp_path / "r.json")
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["verdict"] == "reconciled"
    assert report["counts"]["sagas"] > 0 and report["counts"]["in_flight"] == 0
