"""The local cluster gives each of its processes ports of their own, even when the OS hands out a
port again that the cluster has given but nobody has bound yet."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from paysaga.ops.cluster import localcluster
from paysaga.ops.cluster.localcluster import ClusterPorts, LocalCluster


def test_replica_and_metrics_ports_never_repeat_a_port_already_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ports = ClusterPorts(
        nats=4000, grpc={"payments": 4001, "inventory": 4002, "ledger": 4003, "auth": 4004}, https=4005
    )
    # The OS offers, in turn, ports the cluster has given already, then new ones.
    offered = itertools.chain([4001, 4005, 4000], range(5000, 5100))
    monkeypatch.setattr(localcluster, "free_port", lambda: next(offered))

    cluster = LocalCluster(tmp_path, tmp_path, ports, replicas={"payments": 2, "ledger": 2})
    metrics = [
        cluster.metrics_target(instance) for service in cluster.services for instance in cluster.instances(service)
    ]

    grpc = [cluster.grpc_target(instance) for service in cluster.services for instance in cluster.instances(service)]
    given = [target.rpartition(":")[2] for target in (*grpc, *metrics)] + ["4000", "4005"]
    assert len(given) == len(set(given)), given
