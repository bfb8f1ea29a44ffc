"""The nightly reconciliation against a real cluster: a clean cluster reconciles; then every kind
of mismatch is planted in the real databases, streams and settlement file, and each is found, in
the terminal report, the JSON (the same bytes on a rerun) and the exit status, and announced on
NATS as the reconciliation's own identity."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import eventing
from paysaga.events.v1 import events_pb2
from paysaga.ops.cluster.localcluster import ClusterPorts, LocalCluster
from paysaga.payments.v1 import payments_pb2
from services.reconcile import settlement
from services.reconcile.observations import SettlementLine
from tests.e2e.shop import Shop
from tests.e2e.test_saga import PRICE, settled
from tests.helpers import connect_as

pytestmark = pytest.mark.e2e
SAGA_TIMEOUT_S = 6
MAX_AMOUNT_MINOR = 100_000


@pytest.fixture(scope="module")
def quiet_cluster(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> Iterator[LocalCluster]:
    """A cluster of its own (SQLite), since the test plants faults in its databases and streams."""
    settings = {"PAYSAGA_SAGA_TIMEOUT_S": str(SAGA_TIMEOUT_S), "PAYSAGA_MAX_AMOUNT_MINOR": str(MAX_AMOUNT_MINOR)}
    state_dir = tmp_path_factory.mktemp("reconcile-cluster")
    with LocalCluster(
        state_dir, certs_dir, ClusterPorts.free(), environment={"payments": settings}, reconcile_at="02:30"
    ) as running:
        yield running


def reconcile(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """paysaga-reconcile against the cluster, as the reconciliation identity."""
    return subprocess.run(cluster.reconcile_command(*args), capture_output=True, text=True, timeout=120)


def sqlite_path(cluster: LocalCluster, service: str) -> Path:
    return Path(cluster.database_url(service).split("///", 1)[1])


def write(cluster: LocalCluster, service: str, statement: str, *parameters: Any) -> None:
    with sqlite3.connect(sqlite_path(cluster, service), timeout=10) as connection:
        changed = connection.execute(statement, parameters).rowcount
    assert changed == 1, f"{statement} changed {changed} rows"


def stamp(moment: dt.datetime) -> str:
    """A time as the services store it in SQLite."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


ENDINGS = ("COMPLETED", "REFUNDED", "FAILED", "CANCELLED", "REJECTED")


async def run_purchases(shop: Shop) -> dict[str, list[str]]:
    """Purchases of every ending: completed, refunded, failed (no funds, no stock), cancelled, rejected."""
    purchase = await shop.setup(funds_minor=PRICE * 40, stock=30)
    poor = await shop.setup(funds_minor=0, stock=5)
    sold_out = await shop.setup(funds_minor=PRICE * 5, stock=0)
    made: dict[str, list[str]] = {ending: [] for ending in ENDINGS}
    made["CAPTURE_REVERSED"] = []  # of the cancelled, those the ledger had captured: a capture and a refund to settle
    completed = [await shop.pay(purchase, amount_minor=PRICE) for _ in range(12)]
    for payment in completed:
        assert (await shop.finish(payment.payment_id)).status == payments_pb2.PAYMENT_STATUS_COMPLETED
    refund = completed.pop()
    await shop.payments.RefundPayment(payments_pb2.RefundPaymentRequest(payment_id=refund.payment_id), timeout=10)
    assert (await shop.wait_for(refund.payment_id, {payments_pb2.PAYMENT_STATUS_REFUNDED})).status
    made["REFUNDED"].append(refund.payment_id)
    made["COMPLETED"] = [payment.payment_id for payment in completed]
    for failing in (poor, sold_out):
        payment = await shop.pay(failing, amount_minor=PRICE)
        assert (await shop.finish(payment.payment_id)).status == payments_pb2.PAYMENT_STATUS_FAILED
        made["FAILED"].append(payment.payment_id)
    rejected = await shop.pay(purchase, amount_minor=MAX_AMOUNT_MINOR + 1)
    assert rejected.status == payments_pb2.PAYMENT_STATUS_REJECTED
    made["REJECTED"].append(rejected.payment_id)
    # Cancelled while it may be anywhere in the saga: whatever was done is undone.
    cancelled = await shop.pay(purchase, amount_minor=PRICE)
    with contextlib.suppress(grpc.aio.AioRpcError):  # it may have completed first: then it is another sale
        await shop.payments.CancelPayment(
            payments_pb2.CancelPaymentRequest(payment_id=cancelled.payment_id, reason="changed my mind"), timeout=10
        )
    ending = await shop.finish(cancelled.payment_id)
    made[payments_pb2.PaymentStatus.Name(ending.status).removeprefix("PAYMENT_STATUS_")].append(cancelled.payment_id)
    await settled(shop)
    if ending.status == payments_pb2.PAYMENT_STATUS_CANCELLED and captured(shop.cluster, cancelled.payment_id):
        made["CAPTURE_REVERSED"].append(cancelled.payment_id)
    return made


def captured(cluster: LocalCluster, payment_id: str) -> bool:
    with sqlite3.connect(sqlite_path(cluster, "ledger"), timeout=10) as connection:
        found = connection.execute(
            "SELECT 1 FROM journal_entries WHERE saga_id = ? AND kind = 'CAPTURE'", (payment_id,)
        ).fetchone()
    return found is not None


def settlement_lines(made: dict[str, list[str]], day: dt.date) -> list[SettlementLine]:
    lines = []
    for payment_id in [*made["COMPLETED"], *made["REFUNDED"], *made["CAPTURE_REVERSED"]]:
        lines.append(SettlementLine(0, payment_id, "capture", PRICE, "EUR", day))
    for payment_id in [*made["REFUNDED"], *made["CAPTURE_REVERSED"]]:
        lines.append(SettlementLine(0, payment_id, "refund", PRICE, "EUR", day))
    return lines


async def delete_message(cluster: LocalCluster, stream: str, event_type: str, saga_id: str) -> None:
    """Remove one event from a stream (as ops): what a lost publish looks like."""
    client = await connect_as(cluster.nats_url, cluster.tls_files("ops"))
    try:
        jetstream = client.jetstream()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30)
        subscription = await jetstream.pull_subscribe("paysaga.events.>", stream=stream, config=config)
        sequence = None
        while sequence is None:
            for message in await subscription.fetch(256, timeout=5):
                envelope = eventing.parse(message.data)
                if envelope.event_type == event_type and envelope.saga_id == saga_id:
                    sequence = message.metadata.sequence.stream
        await subscription.unsubscribe()
        await jetstream.delete_msg(stream, sequence)
    finally:
        await client.close()


async def publish_as(
    cluster: LocalCluster, identity: str, subject: str, envelope: events_pb2.EventEnvelope, **headers: str
) -> None:
    client = await connect_as(cluster.nats_url, cluster.tls_files(identity))
    try:
        await client.jetstream().publish(subject, envelope.SerializeToString(), headers=headers or None, timeout=10)
    finally:
        await client.close()


async def plant(cluster: LocalCluster, made: dict[str, list[str]]) -> dict[str, list[str]]:
    """One fault of every kind, each on a payment of its own; returns kind -> payment ids."""
    completed = list(made["COMPLETED"])
    planted: dict[str, list[str]] = {}

    def take(kind: str) -> str:
        payment_id = completed.pop()
        planted.setdefault(kind, []).append(payment_id)
        return payment_id

    # payments says it failed; the ledger captured and inventory sold.
    write(cluster, "payments", "UPDATE payments SET status = 'FAILED' WHERE payment_id = ?", take("outcome_disagrees"))
    write(
        cluster,
        "ledger",
        "UPDATE holds SET amount_minor = amount_minor + 1 WHERE payment_id = ?",
        take("amount_differs"),
    )
    # A second capture entry for one payment, balanced, in the real journal.
    doubled = take("duplicate_effect")
    with sqlite3.connect(sqlite_path(cluster, "ledger"), timeout=10) as connection:
        entry_id, kind, created_at = connection.execute(
            "SELECT entry_id, kind, created_at FROM journal_entries WHERE saga_id = ? AND kind = 'CAPTURE'", (doubled,)
        ).fetchone()
        copy = str(uuid.uuid4())
        connection.execute(
            "INSERT INTO journal_entries (entry_id, kind, saga_id, request_hash, created_at) VALUES (?, ?, ?, NULL, ?)",
            (copy, kind, doubled, created_at),
        )
        connection.execute(
            "INSERT INTO journal_lines (entry_id, account_id, amount_minor) "
            "SELECT ?, account_id, amount_minor FROM journal_lines WHERE entry_id = ?",
            (copy, entry_id),
        )
    # One line of a capture changed: the entry no longer sums to zero.
    unbalanced = take("unbalanced_entry")
    write(
        cluster,
        "ledger",
        "UPDATE journal_lines SET amount_minor = amount_minor + 7 WHERE line_id = "
        "(SELECT MIN(line_id) FROM journal_lines JOIN journal_entries USING (entry_id) WHERE saga_id = ?)",
        unbalanced,
    )
    write(cluster, "inventory", "DELETE FROM reservations WHERE payment_id = ?", take("missing_in_database"))
    await delete_message(cluster, "LEDGER_EVENTS", "FundsCaptured", take("missing_in_stream"))
    # A second FundsCaptured announced for one payment (a new event id: not a redelivery).
    announced_twice = take("duplicate_effect")
    captured = events_pb2.FundsCaptured(
        payment_id=announced_twice, hold_id="h", amount=Money(amount_minor=PRICE, currency="EUR")
    )
    again = eventing.new_event(producer="ledger", saga_id=announced_twice, payload=captured, sla_tier="standard")
    await publish_as(cluster, "ledger", eventing.subject_of(again), again)
    # Records of payments nobody asked for: funds held, stock reserved, a saga stuck past its deadline.
    created = now() - dt.timedelta(seconds=60)
    orphan_hold, orphan_reservation, stuck = (str(uuid.uuid4()) for _ in range(3))
    planted |= {"orphan_hold": [orphan_hold], "orphan_reservation": [orphan_reservation], "stuck_saga": [stuck]}
    write(
        cluster,
        "ledger",
        "INSERT INTO holds (hold_id, payment_id, payer_account_id, merchant_account_id, amount_minor, currency, "
        "status, updated_at) VALUES (?, ?, '', '', ?, 'EUR', 'HELD', ?)",
        str(uuid.uuid4()),
        orphan_hold,
        PRICE,
        stamp(created),
    )
    write(
        cluster,
        "inventory",
        "INSERT INTO reservations (reservation_id, payment_id, sku, quantity, status, updated_at) "
        "VALUES (?, ?, 'sku-x', 1, 'RESERVED', ?)",
        str(uuid.uuid4()),
        orphan_reservation,
        stamp(created),
    )
    with sqlite3.connect(sqlite_path(cluster, "payments"), timeout=10) as connection:
        connection.execute(
            "INSERT INTO payments (payment_id, idempotency_key, request_hash, payer_account_id, merchant_account_id, "
            "sku, quantity, amount_minor, currency, sla_tier, status, reason, version, timed_out, created_at, "
            "updated_at, deadline_at, requested_by, region, declined) "
            "VALUES (?, ?, '', '', '', 'sku-x', 1, ?, 'EUR', 3, 'FUNDS_HELD', '', 2, 0, ?, ?, ?, '', '', 0)",
            (stuck, stuck, PRICE, stamp(created), stamp(created), stamp(created + dt.timedelta(seconds=5))),
        )
    # A message parked in a dead-letter stream, as a consumer parks one it can never handle.
    parked = eventing.new_event(
        producer="payments", saga_id=str(uuid.uuid4()), payload=events_pb2.PaymentCompleted(payment_id="x")
    )
    planted["dead_letter"] = [parked.saga_id]
    await publish_as(
        cluster, "ledger", "paysaga.deadletter.ledger.PaymentCompleted", parked, **{"Paysaga-Reason": "planted"}
    )
    planted["settlement_missing"] = [take("settlement_missing")]
    planted["settlement_differs"] = [take("settlement_differs")]
    planted["settlement_extra"] = [str(uuid.uuid4())]
    return planted


def planted_settlement(made: dict[str, list[str]], planted: dict[str, list[str]], day: dt.date) -> str:
    lines = [line for line in settlement_lines(made, day) if line.reference not in planted["settlement_missing"]]
    lines = [
        SettlementLine(0, line.reference, line.type, line.amount_minor + 100, line.currency, line.value_date)
        if line.reference in planted["settlement_differs"]
        else line
        for line in lines
    ]
    lines.append(SettlementLine(0, planted["settlement_extra"][0], "capture", 999, "EUR", day))
    return settlement.render(lines)


async def announced(cluster: LocalCluster, run_id: str) -> tuple[list[events_pb2.EventEnvelope], list[str]]:
    """The reconciliation's events for run_id, read back as ops; and what the reconcile identity
    may not publish, tried."""
    client = await connect_as(cluster.nats_url, cluster.tls_files("ops"))
    try:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30)
        subscription = await client.jetstream().pull_subscribe(
            "paysaga.events.reconcile.>", stream="RECONCILE_EVENTS", config=config
        )
        found = []
        try:
            while True:
                for message in await subscription.fetch(512, timeout=2):
                    envelope = eventing.parse(message.data)
                    if envelope.causation_id == run_id:
                        found.append(envelope)
        except nats.errors.TimeoutError:
            pass
    finally:
        await client.close()
    refused = []
    own = await connect_as(cluster.nats_url, cluster.tls_files("reconcile"))
    try:
        for subject in ("paysaga.events.ledger.standard.FundsCaptured", "paysaga.deadletter.ledger.X"):
            try:
                await own.jetstream().publish(subject, b"x", timeout=2)
            except (nats.errors.Error, TimeoutError):
                refused.append(subject)
        # Nor may it create (so change) a consumer of any name but its own: here the ledger's.
        durable = ConsumerConfig(name="ledger-from-payments-standard", ack_policy=AckPolicy.NONE, max_deliver=1)
        try:
            await own.jetstream().add_consumer("PAYMENTS_EVENTS", durable, timeout=2)
        except (nats.errors.Error, TimeoutError):
            refused.append("consumer ledger-from-payments-standard")
    finally:
        await own.close()
    return found, refused


async def test_a_clean_cluster_reconciles_then_every_planted_mismatch_is_found(
    quiet_cluster: LocalCluster, tmp_path: Path
) -> None:
    shop = Shop(quiet_cluster)
    try:
        made = await run_purchases(shop)
    finally:
        await shop.close()
    await asyncio.sleep(1.2)  # past the settle time of the last change
    until = now().isoformat()
    today = now().date()
    clean_file = tmp_path / "settlement-clean.csv"
    clean_file.write_text(settlement.render(settlement_lines(made, today)))
    clean = reconcile(
        quiet_cluster,
        "--until",
        until,
        "--settle-s",
        "1",
        "--settlement",
        str(clean_file),
        "--json",
        str(tmp_path / "clean.json"),
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "RECONCILED" in clean.stdout
    report = json.loads((tmp_path / "clean.json").read_text())
    assert report["verdict"] == "reconciled"
    assert report["counts"]["sagas"] == sum(len(made[ending]) for ending in ENDINGS)
    assert report["counts"]["settlement_lines"] == len(settlement_lines(made, today))

    for service in ("payments", "ledger", "inventory"):
        quiet_cluster.pause(service)  # still, while faults are planted
    try:
        planted = await plant(quiet_cluster, made)
        await asyncio.sleep(1.2)
        until = now().isoformat()
        settlement_file = tmp_path / "settlement.csv"
        settlement_file.write_text(planted_settlement(made, planted, today))
        args = ("--until", until, "--settle-s", "1", "--settlement", str(settlement_file))
        first = reconcile(
            quiet_cluster, *args, "--json", str(tmp_path / "first.json"), "--html", str(tmp_path / "r.html")
        )
        second = reconcile(quiet_cluster, *args, "--json", str(tmp_path / "second.json"), "--no-publish")
        found, refused = await announced(quiet_cluster, json.loads((tmp_path / "first.json").read_text())["run_id"])
    finally:
        for service in ("payments", "ledger", "inventory"):
            quiet_cluster.resume(service)

    assert first.returncode == 1, first.stdout + first.stderr
    assert second.returncode == 1, second.stdout + second.stderr
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()
    report = json.loads((tmp_path / "first.json").read_text())
    assert report["verdict"] == "mismatches"
    kinds: dict[str, set[str]] = {}
    for mismatch in report["mismatches"]:
        kinds.setdefault(mismatch["kind"], set()).add(mismatch["payment_id"])
    for kind, payment_ids in planted.items():
        assert set(payment_ids) <= kinds.get(kind, set()), (
            f"{kind}: planted on {payment_ids}, found on {kinds.get(kind)}"
        )
        assert kind in first.stdout
        for payment_id in payment_ids:
            assert payment_id in first.stdout or kind == "dead_letter"
    # Nothing found on payments nobody touched.
    touched = {payment_id for ids in planted.values() for payment_id in ids}
    assert {m["payment_id"] for m in report["mismatches"]} <= touched, report["mismatches"]
    assert (tmp_path / "r.html").read_text().count("<svg") >= 1

    completed = [
        envelope.reconciliation_completed for envelope in found if envelope.event_type == "ReconciliationCompleted"
    ]
    mismatches = [envelope for envelope in found if envelope.event_type == "ReconciliationMismatchFound"]
    assert len(completed) == 1 and completed[0].verdict == "mismatches"
    assert completed[0].mismatches == len(report["mismatches"]) == len(mismatches)
    assert dict(completed[0].mismatches_by_kind) == report["counts"]["by_kind"]
    assert all(envelope.producer == "reconcile" for envelope in found)
    assert refused == [
        "paysaga.events.ledger.standard.FundsCaptured",
        "paysaga.deadletter.ledger.X",
        "consumer ledger-from-payments-standard",
    ]


def test_a_source_that_cannot_be_read_makes_the_run_incomplete(quiet_cluster: LocalCluster, tmp_path: Path) -> None:
    broken = tmp_path / "settlement.csv"
    broken.write_text("reference,type,amount_minor,currency,value_date\nabc,capture,12.50,EUR,2026-12-01\n")
    bad_file = reconcile(quiet_cluster, "--settlement", str(broken), "--json", str(tmp_path / "a.json"), "--no-publish")
    assert bad_file.returncode == 2, bad_file.stdout + bad_file.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["verdict"] == "incomplete" and report["mismatches"] == []
    assert any("line 2: amount_minor '12.50'" in reason for reason in report["incomplete"]), report["incomplete"]
    missing_db = reconcile(
        quiet_cluster, "--ledger-db", f"sqlite+aiosqlite:///{tmp_path / 'nowhere.db'}", "--no-publish"
    )
    assert missing_db.returncode == 2 and "INCOMPLETE" in missing_db.stdout
    assert "ledger database" in missing_db.stdout and not (tmp_path / "nowhere.db").exists()


def test_the_cluster_runs_the_reconciliation_nightly_when_asked(quiet_cluster: LocalCluster) -> None:
    scheduler = quiet_cluster.processes["reconcile"]
    assert scheduler.poll() is None, quiet_cluster.log_tail("reconcile")
    deadline = time.monotonic() + 10
    while "reconcile.next_run" not in quiet_cluster.log_tail("reconcile") and time.monotonic() < deadline:
        time.sleep(0.1)
    next_day = now().date() + dt.timedelta(days=int(now().time() >= dt.time(2, 30)))
    assert f'"at":"{next_day}T02:30:00+00:00"' in quiet_cluster.log_tail("reconcile")
