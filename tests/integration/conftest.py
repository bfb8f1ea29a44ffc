from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from paysaga.ops.cluster.localcluster import ClusterPorts, LocalCluster
from tests.integration.messaging_rig import rig  # noqa: F401 - the fixture, for every module here


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LocalCluster]:
    """A real nats-server (mTLS, JetStream with fsync) on a free port, with no services started."""
    cluster = LocalCluster(tmp_path_factory.mktemp("nats"), certs_dir, ClusterPorts.free(), services=())
    with cluster:
        yield cluster
