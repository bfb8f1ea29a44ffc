"""A service process as ops see it: start-up against real NATS, structured logs, drain on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from paysaga.ops.cluster.localcluster import LocalCluster
from tests.helpers import wait_for_log


def log_records(cluster: LocalCluster, name: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in cluster.log_path(name).read_text().splitlines()]


def test_service_starts_serves_and_drains_on_sigterm_with_one_json_line_per_event(nats_cluster: LocalCluster) -> None:
    process = nats_cluster.start_service("inventory")
    nats_cluster.wait_serving("inventory")

    process.send_signal(signal.SIGTERM)
    exit_code = process.wait(timeout=30)
    nats_cluster.processes.pop("inventory")

    assert exit_code == 0
    records = log_records(nats_cluster, "inventory")
    events = [record["event"] for record in records]
    assert events.index("stream.created") < events.index("service.ready") < events.index("service.draining")
    assert events[-1] == "service.stopped"
    assert all(record["service"] == "inventory" and record["ts"] and record["level"] for record in records)
    ready = next(record for record in records if record["event"] == "service.ready")
    assert ready["grpc_port"] == nats_cluster.ports.grpc["inventory"]


def test_restart_finds_its_streams_and_leaves_them_as_they_are(nats_cluster: LocalCluster) -> None:
    for _ in range(2):
        process = nats_cluster.start_service("ledger")
        nats_cluster.wait_serving("ledger")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        nats_cluster.processes.pop("ledger")

    events = [record["event"] for record in log_records(nats_cluster, "ledger")]
    assert events.count("service.ready") == 2
    assert events.count("stream.created") == 2, "two streams, created by the first start only"


def test_missing_certificate_stops_start_up_with_a_message_naming_the_file(
    nats_cluster: LocalCluster, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "payments.crt"

    process = nats_cluster.start_service("payments", PAYSAGA_TLS_CERT=str(missing))
    exit_code = process.wait(timeout=30)
    nats_cluster.processes.pop("payments")

    assert exit_code == 1
    failure = log_records(nats_cluster, "payments")[-1]
    assert failure["event"] == "service.start_failed" and failure["level"] == "error"
    assert str(missing) in str(failure["error"]) and "paysaga-certs bootstrap" in str(failure["error"])


def test_a_key_that_does_not_belong_to_the_certificate_is_named_at_start(nats_cluster: LocalCluster) -> None:
    wrong_key = nats_cluster.tls_files("ledger").key_file

    process = nats_cluster.start_service("payments", PAYSAGA_TLS_KEY=str(wrong_key))
    exit_code = process.wait(timeout=30)
    nats_cluster.processes.pop("payments")

    assert exit_code == 1
    failure = log_records(nats_cluster, "payments")[-1]
    assert failure["event"] == "service.start_failed"
    assert failure["error"] == f"{wrong_key} is not the private key of {nats_cluster.tls_files('payments').cert_file}"


def test_unreachable_nats_fails_start_up_after_the_startup_timeout(nats_cluster: LocalCluster) -> None:
    process = nats_cluster.start_service(
        "payments", PAYSAGA_NATS_URL="tls://127.0.0.1:1", PAYSAGA_STARTUP_TIMEOUT_S="2"
    )
    exit_code = process.wait(timeout=30)
    nats_cluster.processes.pop("payments")

    assert exit_code == 1
    line = wait_for_log(nats_cluster, "payments", "could not connect to NATS at tls://127.0.0.1:1 within 2 s")
    assert json.loads(line)["event"] == "service.start_failed"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--stream-replicas", "2", "must be 1, 3 or 5"),
        ("--drain-timeout-s", "-1", "must be positive"),
        ("--log-level", "LOUD", "--log-level must be DEBUG, INFO, WARNING or ERROR"),
    ],
)
def test_invalid_settings_are_refused_before_anything_starts(flag: str, value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.ledger", flag, value], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2
    assert message in result.stderr
