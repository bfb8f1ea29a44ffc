"""The paysaga CLI as a person uses it against the running cluster: set up, pay, look, refund."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from paysaga.ops.cluster.localcluster import LocalCluster
from tests.e2e.conftest import cli_runner

pytestmark = pytest.mark.e2e
T = TypeVar("T")


def eventually(look: Callable[[], T], done: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """What look() shows once done() says so, or at the deadline (for the assertion to show)."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = look()
        if done(shown) or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)


@pytest.fixture
def paysaga(cluster: LocalCluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    return cli_runner(cluster)


def test_a_purchase_from_the_command_line(paysaga: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    wallet = paysaga("account", "open", "--kind", "wallet", "--currency", "EUR", "--owner", "Ada").stdout.strip()
    shop = paysaga("account", "open", "--kind", "merchant", "--currency", "EUR", "--owner", "Shop").stdout.strip()
    assert paysaga("account", "deposit", wallet, "5000", "EUR").returncode == 0
    sku = f"cli-{wallet[:8]}"
    assert paysaga("item", "add", sku, "--name", "Mug", "--price", "1250", "--currency", "EUR").returncode == 0
    assert paysaga("item", "receive", sku, "3").returncode == 0

    paid = paysaga(
        "pay", "--payer", wallet, "--merchant", shop, "--sku", sku, "--amount", "1250", "--currency", "EUR", "--wait"
    )

    assert paid.returncode == 0, paid.stderr
    shown = [line.split()[2] for line in paid.stdout.splitlines()]
    # Every status payments recorded, in order. STOCK_RESERVED comes from inventory's stream and
    # the capture from the ledger's: when the ledger's FundsCaptured reaches payments first, the
    # payment goes from FUNDS_HELD straight to COMPLETED, and there is no STOCK_RESERVED to show.
    assert shown in (
        ["PENDING", "FUNDS_HELD", "STOCK_RESERVED", "COMPLETED"],
        ["PENDING", "FUNDS_HELD", "COMPLETED"],
    ), shown
    balance = json.loads(paysaga("--json", "account", "balance", wallet).stdout)
    assert (balance["balance_minor"], balance.get("held_minor", "0")) == ("3750", "0")
    listed = json.loads(paysaga("--json", "payment", "list", "--payer", wallet).stdout)
    [payment] = listed["payments"]
    assert payment["status"] == "PAYMENT_STATUS_COMPLETED"
    # Inventory commits the sale when it sees the capture, independently of payments: wait for it.
    assert "available 2, reserved 0, sold 1" in eventually(
        lambda: paysaga("item", "get", sku).stdout, lambda shown: "sold 1" in shown
    )
    statement = paysaga("account", "statement", wallet).stdout
    assert [line.split()[2] for line in statement.splitlines()[1:]] == ["DEPOSIT", "HOLD", "CAPTURE"]

    refunded = paysaga("payment", "refund", payment["payment_id"], "--reason", "damaged")
    assert refunded.returncode == 0 and "REFUNDING" in refunded.stdout


def test_a_refused_request_prints_the_status_and_exits_1(
    paysaga: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = paysaga("account", "balance", "not-a-uuid")

    assert result.returncode == 1
    assert result.stderr.strip() == "paysaga: INVALID_ARGUMENT: account_id must be a UUID, got 'not-a-uuid'"


def test_a_failed_payment_makes_pay_wait_exit_3(paysaga: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    wallet = paysaga("account", "open", "--kind", "wallet", "--currency", "EUR", "--owner", "Bo").stdout.strip()
    shop = paysaga("account", "open", "--kind", "merchant", "--currency", "EUR", "--owner", "Shop").stdout.strip()

    paid = paysaga(
        "pay", "--payer", wallet, "--merchant", shop, "--sku", "none", "--amount", "10", "--currency", "EUR", "--wait"
    )

    assert paid.returncode == 3
    assert paid.stdout.splitlines()[-1].endswith("reason: insufficient funds: available 0, needed 10")


def test_lanes_shows_every_lane_of_every_service(
    paysaga: Callable[..., subprocess.CompletedProcess[str]], cluster: LocalCluster
) -> None:
    shown = paysaga("--json", "lanes", "--nats-url", cluster.nats_url)

    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    lanes = {(row["service"], row["producer"], row["lane"]) for row in rows}
    # payments reads the ledger's compensations and every tier of its forward steps, for example.
    for lane in ("compensation", "critical", "priority", "standard"):
        assert ("payments", "ledger", lane) in lanes
        assert ("inventory", "ledger", lane) in lanes
    assert all(row["pending"] >= 0 and row["oldest_age_s"] >= 0 for row in rows)
    text = paysaga("lanes", "--nats-url", cluster.nats_url).stdout
    assert "compensation" in text and "oldest" in text


def test_trace_shows_a_payments_events_across_the_services_in_order(
    paysaga: Callable[..., subprocess.CompletedProcess[str]], cluster: LocalCluster
) -> None:
    wallet = paysaga("account", "open", "--kind", "wallet", "--currency", "EUR", "--owner", "Cy").stdout.strip()
    shop = paysaga("account", "open", "--kind", "merchant", "--currency", "EUR", "--owner", "Shop").stdout.strip()
    paid = paysaga(
        "--json", "pay", "--payer", wallet, "--merchant", shop, "--sku", "none", "--amount", "10", "--currency", "EUR"
    )
    payment_id = json.loads(paid.stdout)["payment"]["payment_id"]
    expected = ["PaymentRequested", "FundsHoldFailed", "PaymentFailed"]

    def trace() -> dict[str, Any]:
        shown = paysaga("--json", "trace", payment_id, "--nats-url", cluster.nats_url)
        assert shown.returncode == 0, shown.stderr
        return dict(json.loads(shown.stdout))

    # The last event is published a moment after the payment ends.
    timeline = eventually(trace, lambda found: len(found["events"]) == len(expected))

    assert [event["event_type"] for event in timeline["events"]] == expected
    assert [event["producer"] for event in timeline["events"]] == ["payments", "ledger", "payments"]
    assert timeline["status"] == "FAILED"
    first, hold_failed, failed = timeline["events"]
    assert first["after_cause_ms"] is None and hold_failed["after_cause_ms"] >= 0 and failed["after_cause_ms"] >= 0
    assert "insufficient funds" in hold_failed["detail"]
    text = paysaga("trace", payment_id, "--nats-url", cluster.nats_url).stdout
    assert f"payment {payment_id} FAILED: 3 events" in text and "FundsHoldFailed" in text
    unknown = paysaga("trace", "00000000-0000-4000-8000-000000000000", "--nats-url", cluster.nats_url)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
