from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from paysaga.localcluster import ClusterPorts, LocalCluster
from tests.e2e.shop import Shop

# Small limits so the rule, timeout and velocity branches are quick to reach.
SAGA_TIMEOUT_S = 6
MAX_AMOUNT_MINOR = 100_000
VELOCITY_LIMIT = 5
PAYMENTS_SETTINGS = {
    "PAYSAGA_SAGA_TIMEOUT_S": str(SAGA_TIMEOUT_S),
    "PAYSAGA_MAX_AMOUNT_MINOR": str(MAX_AMOUNT_MINOR),
    "PAYSAGA_VELOCITY_LIMIT": str(VELOCITY_LIMIT),
}


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LocalCluster]:
    """The whole cluster as local processes: real nats-server, the three services, our certificates."""
    running = LocalCluster(
        tmp_path_factory.mktemp("cluster"), certs_dir, ClusterPorts.free(), environment={"payments": PAYMENTS_SETTINGS}
    )
    with running:
        yield running


@pytest.fixture
async def shop(cluster: LocalCluster) -> AsyncIterator[Shop]:
    client = Shop(cluster)
    yield client
    await client.close()
