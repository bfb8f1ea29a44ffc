"""The benchmark runs end to end: raw limits, a fresh cluster, every scenario, a clean report.

A short run, so the harness cannot rot unnoticed; it asserts what the report promises (every
purchase ended as intended, the invariants hold, every figure is there), never a speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_a_short_benchmark_run_reports_every_figure_and_no_errors(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    command = [sys.executable, "-m", "bench", "--duration-s", "3", "--warmup-s", "1", "--limits-duration-s", "0.5"]
    command += ["--concurrency", "8", "--rate", "10", "--wallets", "8", "--skus", "4", "--mix", "80,10,10"]
    command += [
        "--backlog-events",
        "600",
        "--rules-decisions",
        "500",
        "--rules-warm-attempts",
        "2000",
        "--reconcile-sagas",
        "300",
    ]
    command += ["--work-dir", str(tmp_path / "work"), "--json", str(report_file)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)

    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(report_file.read_text())
    assert {limit["name"] for limit in report["raw_limits"]} == {
        "mTLS echo RPC",
        "JetStream publish+ack (fsync)",
        "saga messaging skeleton",
        "saga messaging skeleton, single publishes",
        "outbox relay, backlog, atomic batches of 64+",
        "outbox relay, backlog, single publishes",
    }
    assert all(limit["per_s"] > 0 for limit in report["raw_limits"])
    assert [scenario["name"] for scenario in report["scenarios"]] == ["throughput", "latency", "lanes"]
    for scenario in report["scenarios"]:
        assert scenario["errors"] == {}
        assert scenario["ended_in_window"] > 0 and scenario["sagas_per_s"] > 0
        outcomes = scenario["outcomes"]
        expected = {"success->COMPLETED", "out_of_stock->FAILED", "insufficient_funds->FAILED"}
        if scenario["name"] == "lanes":
            # Cancelled, or refused (RESOURCE_EXHAUSTED, no status) under overload.
            expected |= {"success->CANCELLED", "success->none", "out_of_stock->none", "insufficient_funds->none"}
        assert set(outcomes) <= expected
        assert outcomes.get("success->COMPLETED", 0) > 0
        latency = scenario["latency_ms"]
        assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
        assert set(scenario["cpu_ms_per_saga"]) == {
            "nats",
            "payments",
            "inventory",
            "ledger",
            "auth",
            "bench",
            "total",
        }
        assert all(value > 0 for value in scenario["peak_rss_mib"].values())
        assert scenario["ratios"]["sagas_per_echo_rpc"] > 0
        assert scenario["ratios"]["sagas_per_skeleton_saga"] > 0
        # Where the time goes: every hop of the purchases that completed straight away, and the whole.
        hops = scenario["stages"]
        names = [hop["stage"] for hop in hops]
        assert len(names) == 6 and names[0] == "create → PaymentRequested" and names[-1] == "create → PaymentCompleted"
        assert all(hop["sagas"] > 0 and 0 <= hop["p50_ms"] <= hop["p99_ms"] for hop in hops)
        assert sum(hop["p50_ms"] for hop in hops[:-1]) <= hops[-1]["p99_ms"] * len(hops)
    lanes = report["scenarios"][2]["lanes"]
    assert set(lanes["tiers"]) == {"standard", "priority", "critical"}
    assert sum(tier["offered"] for tier in lanes["tiers"].values()) > 0
    assert all(tier["completed_per_s"] >= 0 and tier["refused"] >= 0 for tier in lanes["tiers"].values())
    assert set(lanes["compensations"]) >= {"count", "outcomes", "p50_ms", "p99_ms"}
    assert "standard share" in finished.stdout
    assert report["invariants"]["ok"], report["invariants"]["violations"]
    oauth = report["oauth"]
    endpoint = oauth["token_endpoint"]
    assert endpoint["per_s"] > 0 and 0 < endpoint["latency_ms"]["p50_ms"] <= endpoint["latency_ms"]["p99_ms"]
    assert endpoint["cpu_percent"]["auth"] > 0
    checks = oauth["checks_per_call"]
    assert all(checks[name] > 0 for name in ("service_identity_us", "client_token_us", "first_use_us"))
    assert "token endpoint" in finished.stdout
    assert "completed sagas/s" in finished.stdout and "Raw limits of this machine" in finished.stdout
    assert "stage (event stored)" in finished.stdout
    rules = report["rules"]
    assert (rules["rules"], rules["decisions"]) == (20, 500)
    assert 0 < rules["latency_us"]["p50_us"] <= rules["latency_us"]["p99_us"] <= rules["latency_us"]["max_us"]
    assert sum(rules["actions"].values()) == 500 and rules["trivial_cel_us"] > 0 and rules["parse_ms"] > 0
    assert "Fraud rules" in finished.stdout
    # The generated purchases are what the services would have written: they reconcile.
    reconciliation = report["reconciliation"]
    assert (reconciliation["verdict"], reconciliation["exit_code"]) == ("reconciled", 0)
    assert reconciliation["sagas_checked"] == 300 and reconciliation["events"] > 300
