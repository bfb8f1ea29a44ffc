from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from paysaga.localcluster import ClusterPorts, LocalCluster


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LocalCluster]:
    """The whole cluster as local processes: real nats-server, the three services, our certificates."""
    with LocalCluster(tmp_path_factory.mktemp("cluster"), certs_dir, ClusterPorts.free()) as running:
        yield running
