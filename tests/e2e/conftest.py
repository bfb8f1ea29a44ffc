from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from paysaga.ops.cluster.localcluster import AUTHORIZATION_SERVER, SERVICES, ClusterPorts, LocalCluster
from paysaga.ops.cluster.postgres import ThrowawayPostgres
from tests.e2e.shop import Shop

# Small limits so the rule, timeout and velocity branches are quick to reach.
SAGA_TIMEOUT_S = 6
MAX_AMOUNT_MINOR = 100_000
VELOCITY_LIMIT = 5
# Above every other test's purchases at once (10), so only the admission test reaches it.
MAX_IN_FLIGHT = 20
PAYMENTS_SETTINGS = {
    "PAYSAGA_SAGA_TIMEOUT_S": str(SAGA_TIMEOUT_S),
    "PAYSAGA_MAX_AMOUNT_MINOR": str(MAX_AMOUNT_MINOR),
    "PAYSAGA_VELOCITY_LIMIT": str(VELOCITY_LIMIT),
    "PAYSAGA_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
}


@pytest.fixture(scope="package", params=["sqlite", "postgresql-2-replicas-3-nats"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs_dir: Path
) -> Iterator[LocalCluster]:
    """The whole cluster as local processes: real nats-server, the three services, our certificates.

    Every end-to-end test runs twice: on SQLite with one process per service and one nats-server,
    and on PostgreSQL with two replicas of every service sharing the work (clients round-robin
    between them) and a cluster of three nats-servers keeping every stream on each (R3).
    """
    with backend_cluster(request, tmp_path_factory.mktemp("cluster"), certs_dir, PAYMENTS_SETTINGS) as running:
        yield running


@contextlib.contextmanager
def backend_cluster(
    request: pytest.FixtureRequest, state_dir: Path, certs_dir: Path, payments_settings: dict[str, str]
) -> Iterator[LocalCluster]:
    """A running cluster for the backend the fixture's parameter names: "sqlite" (one process per
    service) or "postgresql-2-replicas..." (a database per service on the session's throwaway
    PostgreSQL server, two processes per service of the saga, one authorization server); a name
    ending "-3-nats" runs a cluster of three nats-servers."""
    environment: dict[str, dict[str, str]] = {service: {} for service in (*SERVICES, AUTHORIZATION_SERVER)}
    environment["payments"].update(payments_settings)
    replicas = {}
    if request.param.startswith("postgresql"):
        postgres: ThrowawayPostgres = request.getfixturevalue("postgres")
        for service in (*SERVICES, AUTHORIZATION_SERVER):
            database = postgres.create_database(f"{service}_{uuid.uuid4().hex[:8]}")
            environment[service]["PAYSAGA_DATABASE_URL"] = database
        replicas = dict.fromkeys(SERVICES, 2)
    nats_nodes = 3 if request.param.endswith("-3-nats") else 1
    with LocalCluster(
        state_dir, certs_dir, ClusterPorts.free(), environment=environment, replicas=replicas, nats_nodes=nats_nodes
    ) as running:
        yield running


def cli_runner(cluster: LocalCluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The paysaga CLI as ops, against the cluster: run("payment", "list") -> its exit and output."""
    ops = cluster.tls_files("ops")
    connection = [
        *("--payments", cluster.targets("payments"), "--inventory", cluster.targets("inventory")),
        *("--ledger", cluster.targets("ledger"), "--cert", str(ops.cert_file), "--key", str(ops.key_file)),
        *("--ca", str(ops.ca_file)),
    ]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "paysaga.ops.client.cli", *connection, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
async def shop(cluster: LocalCluster) -> AsyncIterator[Shop]:
    client = Shop(cluster)
    yield client
    await client.close()
