from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless browser, for the pages whose test is what a browser shows once it ran them."""
    found = shutil.which("chromium")
    if found is None:
        message = "chromium (Debian package chromium) is not installed"
        # Locally a missing browser skips those cases, saying why; under CI it is a failure.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs chromium: {message}")
        pytest.skip(message)
    return found
