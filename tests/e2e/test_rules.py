"""The fraud rules against the running cluster: each kind of rule, an adaptive threshold, shadow
mode, a regional burst detected, hot reload of a good and of a broken file, and every decision
recorded (GetPayment, ListDecisions). On SQLite and on PostgreSQL with two payments replicas,
whose statistics and rules must agree."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from paysaga.core.eventing import EventEnvelope
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.payments.v1 import payments_pb2
from services.payments.rules.ruleset import shown
from tests.e2e.conftest import MAX_AMOUNT_MINOR, backend_cluster, cli_runner
from tests.e2e.shop import Purchase, Shop, status_name
from tests.e2e.test_ownership import as_client
from tests.helpers import eventually, wait_for_log

pytestmark = pytest.mark.e2e

RULES = """\
score_thresholds: {review: 100, block: 100}
rules:
  - id: amount_cap
    when: request.amount_minor > limits.amount_minor_max
    action: block
    reason: "amount {request.amount_minor} exceeds the cap of {limits.amount_minor_max} per payment"
  - id: trusted_region
    when: request.region == "CH"
    action: allow
    reason: "purchases from {request.region} are trusted"
  - id: sanctioned_region
    when: request.region == "KP"
    action: block
    reason: "no purchases from {request.region}"
  - id: large_for_payer
    when: payer.samples >= 3 && request.amount_minor > payer.amount_p90 * 2.0
    action: block
    reason: "amount {request.amount_minor} is over twice the payer's p90 of {payer.amount_p90}"
  - id: bulk
    when: request.quantity >= 3
    score: 60
  - id: risky_region
    when: request.region == "BR"
    score: 60
  - id: large_in_shadow
    when: request.amount_minor >= 5000
    action: block
    mode: shadow
    reason: "amount {request.amount_minor} is 5000 or more"
  - id: review_region
    when: request.region == "IN"
    action: review
    reason: "purchases from {request.region} are reviewed"
  - id: region_spike
    when: region.spike
    action: block
    reason: "a burst of purchases from {request.region} ({region.count_1m} in the last minute)"
"""
assert MAX_AMOUNT_MINOR > 10_000
NEW_RULE = """\
  - id: closed_region
    when: request.region == "CL"
    action: block
    reason: "purchases from CL are closed"
"""
BROKEN_RULE = """\
  - id: broken
    when: request.no_such_input > 1
    action: block
"""
SPIKE_MIN_COUNT = 8
REVIEW_TIMEOUT_S = 5
SETTINGS = {
    "PAYSAGA_STATS_BUCKET_S": "1",
    "PAYSAGA_BASELINE_BUCKETS": "30",
    "PAYSAGA_SPIKE_MIN_COUNT": str(SPIKE_MIN_COUNT),
    "PAYSAGA_SPIKE_MIN_BUCKETS": "5",
    "PAYSAGA_SPIKE_HOLD_BUCKETS": "30",
    "PAYSAGA_MAX_AMOUNT_MINOR": str(MAX_AMOUNT_MINOR),
    "PAYSAGA_REVIEW_TIMEOUT_S": str(REVIEW_TIMEOUT_S),
}
BLOCK = payments_pb2.DECISION_ACTION_BLOCK
ALLOW = payments_pb2.DECISION_ACTION_ALLOW


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def replace_file(path: Path, text: str) -> None:
    """As a deployment should: a new file renamed over the old one."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    staged.replace(path)


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture(scope="module", params=["sqlite", "postgresql-2-replicas"])
def rules_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, certs_dir: Path, rules_file: Path
) -> Iterator[LocalCluster]:
    settings = {**SETTINGS, "PAYSAGA_RULES_FILE": str(rules_file)}
    with backend_cluster(request, tmp_path_factory.mktemp("rules-cluster"), certs_dir, settings) as running:
        yield running


@pytest.fixture
async def shop(rules_cluster: LocalCluster) -> AsyncIterator[Shop]:
    client = Shop(rules_cluster)
    yield client
    await client.close()


def hits(payment: payments_pb2.Payment) -> dict[str, payments_pb2.RuleHit]:
    return {hit.rule_id: hit for hit in payment.decision.hits}


async def test_an_action_rule_blocks_and_the_decision_says_why(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=10_000, stock=5)

    created = await shop.pay(purchase, amount_minor=1250, region="KP")

    assert status_name(created) == "REJECTED"
    assert created.reason == "no purchases from KP"
    assert created.region == "KP"
    stored = await shop.payment(created.payment_id)
    assert stored.decision == created.decision
    decision = stored.decision
    assert decision.payment_id == created.payment_id
    assert decision.action == BLOCK
    assert decision.rule_set_sha256 == sha256(RULES)
    assert list(hits(stored)) == ["sanctioned_region"]
    hit = hits(stored)["sanctioned_region"]
    assert (hit.action, hit.shadow, dict(hit.inputs)) == (BLOCK, False, {"request.region": "KP"})
    assert await shop.balance(purchase.payer) == (10_000, 0, 10_000)  # nothing was held


async def test_an_allow_rule_lets_a_purchase_through_what_would_block_it(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=2 * MAX_AMOUNT_MINOR, stock=5, price_minor=MAX_AMOUNT_MINOR + 1)

    blocked = await shop.pay(purchase, amount_minor=MAX_AMOUNT_MINOR + 1)
    allowed = await shop.pay(purchase, amount_minor=MAX_AMOUNT_MINOR + 1, region="CH")

    assert (status_name(blocked), blocked.decision.action) == ("REJECTED", BLOCK)
    assert status_name(await shop.finish(allowed.payment_id)) == "COMPLETED"
    assert allowed.decision.action == ALLOW
    assert [(hit.rule_id, hit.action, hit.shadow) for hit in allowed.decision.hits] == [
        ("amount_cap", BLOCK, False),
        ("trusted_region", ALLOW, False),
        ("large_in_shadow", BLOCK, True),
    ]


async def test_score_rules_add_up_to_the_thresholds(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=100_000, stock=10, price_minor=1000)

    one = await shop.pay(purchase, amount_minor=3000, quantity=3)
    both = await shop.pay(purchase, amount_minor=3000, quantity=3, region="BR")

    assert status_name(await shop.finish(one.payment_id)) == "COMPLETED"
    assert (one.decision.action, one.decision.score, list(hits(one))) == (ALLOW, 60, ["bulk"])
    assert status_name(both) == "REJECTED"
    assert both.reason == "risk score 120 reached the block threshold of 100 (bulk, risky_region)"
    assert (both.decision.action, both.decision.score) == (BLOCK, 120)


async def test_a_shadow_rule_records_what_it_would_have_done_and_changes_nothing(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=100_000, stock=5, price_minor=6000)

    payment = await shop.pay(purchase, amount_minor=6000)

    assert status_name(await shop.finish(payment.payment_id)) == "COMPLETED"
    decision = payment.decision
    assert (decision.action, decision.shadow_action) == (ALLOW, BLOCK)
    hit = hits(payment)["large_in_shadow"]
    assert (hit.shadow, hit.reason, dict(hit.inputs)) == (
        True,
        "amount 6000 is 5000 or more",
        {"request.amount_minor": "6000"},
    )
    listed = await shop.payments.ListDecisions(
        payments_pb2.ListDecisionsRequest(shadow_only=True, rule_id="large_in_shadow", payer_account_id=purchase.payer),
        timeout=10,
    )
    assert [found.payment_id for found in listed.decisions] == [payment.payment_id]
    blocked = await shop.payments.ListDecisions(
        payments_pb2.ListDecisionsRequest(action=BLOCK, payer_account_id=purchase.payer), timeout=10
    )
    assert list(blocked.decisions) == []


async def test_an_adaptive_threshold_moves_with_the_payers_amounts(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=100_000, stock=20, price_minor=1000)
    # The same payer and merchant, an item at each price.
    items = {price: await shop.add_item(5, price) for price in (1900, 2500)} | {1000: purchase.sku}

    payment_ids: list[str] = []

    async def pay(amount_minor: int) -> payments_pb2.Payment:
        item = dataclasses.replace(purchase, sku=items[amount_minor])
        created = await shop.pay(item, amount_minor=amount_minor)
        payment_ids.append(created.payment_id)
        return await shop.finish(created.payment_id) if status_name(created) != "REJECTED" else created

    for _ in range(3):
        assert status_name(await pay(1000)) == "COMPLETED"
    refused = await pay(2500)
    assert status_name(refused) == "REJECTED", refused.decision
    p90_before = float(refused.decision.inputs["payer.amount_p90"])
    assert refused.reason == f"amount 2500 is over twice the payer's p90 of {shown(p90_before)}"
    for _ in range(3):
        assert status_name(await pay(1900)) == "COMPLETED"
    accepted = await pay(2500)

    assert status_name(accepted) == "COMPLETED", accepted.decision
    # The figures each was judged by are recorded, whether a rule fired or not (quantiles within 1%).
    p90_after = float((await shop.payment(accepted.payment_id)).decision.inputs["payer.amount_p90"])
    assert abs(p90_before - 1000) <= 10 and abs(p90_after - 1900) <= 19
    assert accepted.decision.inputs["payer.samples"] == "6"  # the refused 2500 is not a sample
    # One decision per payment, whichever replica took it; a retry with the same key takes none.
    retried = await shop.create(
        dataclasses.replace(purchase, sku=items[2500]), amount_minor=2500, key=accepted.idempotency_key
    )
    assert retried.replayed and retried.payment.decision == accepted.decision
    listed = await shop.payments.ListDecisions(
        payments_pb2.ListDecisionsRequest(payer_account_id=purchase.payer), timeout=10
    )
    assert sorted(found.payment_id for found in listed.decisions) == sorted(payment_ids)


async def test_a_regional_burst_is_detected_announced_once_and_seen_by_the_rules(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=1_000_000, stock=100, price_minor=100)
    region = "NZ"
    # A baseline first (a region without one has no spike): one purchase a second, no spike.
    started = time.monotonic()
    for second in range(6):
        await asyncio.sleep(max(0.0, started + second - time.monotonic()))
        assert status_name(await shop.pay(purchase, amount_minor=100, region=region)) != "REJECTED"

    burst = await asyncio.gather(
        *(shop.pay(purchase, amount_minor=100, region=region) for _ in range(3 * SPIKE_MIN_COUNT))
    )

    def is_spike(envelope: EventEnvelope) -> bool:
        return envelope.event_type == "TrafficSpikeDetected" and envelope.traffic_spike_detected.key == region

    deadline = time.monotonic() + 15
    spikes = await shop.events(is_spike)
    while not spikes and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        spikes = await shop.events(is_spike)
    assert spikes, "no TrafficSpikeDetected for the burst"
    buckets = [envelope.traffic_spike_detected.bucket_start.ToSeconds() for envelope in spikes]
    assert len(buckets) == len(set(buckets)), "a spike was announced twice"
    first = spikes[0].traffic_spike_detected
    assert (first.kind, first.count >= SPIKE_MIN_COUNT, first.z >= 4.0) == ("region", True, True)
    after = await shop.pay(purchase, amount_minor=100, region=region)
    assert status_name(after) == "REJECTED"
    assert hits(after)["region_spike"].inputs["region.spike"] == "true"
    assert len(burst) == 3 * SPIKE_MIN_COUNT


async def test_a_changed_rules_file_is_live_within_2_s_and_a_broken_one_is_refused(
    shop: Shop, rules_file: Path, rules_cluster: LocalCluster
) -> None:
    purchase = await shop.setup(funds_minor=1_000_000, stock=100, price_minor=100)
    good = RULES + NEW_RULE

    async def pay_paced() -> payments_pb2.Payment:
        """Fewer purchases per second than a spike (which a rule above would block)."""
        await asyncio.sleep(1 / (SPIKE_MIN_COUNT - 2))
        return await shop.pay(purchase, amount_minor=100, region="CL")

    try:
        replace_file(rules_file, good)
        changed_at = time.monotonic()
        # Live on every replica within 2 s: calls go round-robin, so as many rejections in a row
        # as there are replicas.
        replicas = len(rules_cluster.instances("payments"))
        recent: list[str] = []
        while recent[-replicas:] != ["REJECTED"] * replicas and time.monotonic() - changed_at <= 2.0:
            recent.append(status_name(await pay_paced()))
        assert recent[-replicas:] == ["REJECTED"] * replicas, f"the new rule was not live within 2 s: {recent}"
        later = [await pay_paced() for _ in range(4)]
        assert {(status_name(found), found.decision.rule_set_sha256) for found in later} == {("REJECTED", sha256(good))}

        replace_file(rules_file, good + BROKEN_RULE)
        for name in rules_cluster.instances("payments"):
            line = await asyncio.to_thread(wait_for_refusal, rules_cluster, name)
            assert "request.no_such_input, which is not an input" in line
        kept = [await pay_paced() for _ in range(4)]
        assert {(status_name(found), found.decision.rule_set_sha256) for found in kept} == {("REJECTED", sha256(good))}
    finally:
        replace_file(rules_file, RULES)


def wait_for_refusal(cluster: LocalCluster, name: str) -> str:
    return wait_for_log(cluster, name, '"event":"rules.refused"', timeout_s=5)


async def test_list_decisions_refuses_bad_filters_and_other_clients(shop: Shop, rules_cluster: LocalCluster) -> None:
    bad = [
        payments_pb2.ListDecisionsRequest(action=9),  # type: ignore[arg-type]
        payments_pb2.ListDecisionsRequest(payer_account_id="not-a-uuid"),
        payments_pb2.ListDecisionsRequest(rule_id="x" * 65),
        payments_pb2.ListDecisionsRequest(page_size=-1),
    ]
    for request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await shop.payments.ListDecisions(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
    purchase: Purchase = await shop.setup(funds_minor=1000, stock=1, price_minor=100)
    with pytest.raises(grpc.aio.AioRpcError) as bad_region:
        await shop.pay(purchase, amount_minor=100, region="XX")
    assert bad_region.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ISO 3166-1" in (bad_region.value.details() or "")
    listed = await shop.payments.ListDecisions(
        payments_pb2.ListDecisionsRequest(payer_account_id=purchase.payer), timeout=10
    )
    assert list(listed.decisions) == []  # the refused request decided nothing


async def held_for_review(shop: Shop, purchase: Purchase, amount_minor: int) -> payments_pb2.Payment:
    """A purchase the rules hold for review, once the ledger holds its funds."""
    payment = await shop.pay(purchase, amount_minor=amount_minor, region="IN")
    assert status_name(payment) == "UNDER_REVIEW"
    assert payment.reason == "purchases from IN are reviewed"
    assert payment.decision.action == payments_pb2.DECISION_ACTION_REVIEW
    deadline = time.monotonic() + 10
    while await shop.balance(purchase.payer) != (10_000, amount_minor, 10_000 - amount_minor):
        assert time.monotonic() < deadline, "the funds of a purchase under review were not held"
        await asyncio.sleep(0.05)
    assert await shop.stock(purchase.sku) == (5, 0, 0)  # no stock reserved while under review
    return payment


async def test_an_approved_review_goes_on_to_completion(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=10_000, stock=5, price_minor=1000)
    payment = await held_for_review(shop, purchase, 1000)

    approved = await shop.payments.ApprovePayment(
        payments_pb2.ReviewPaymentRequest(payment_id=payment.payment_id, reason="known customer"), timeout=10
    )

    assert status_name(approved) == "PENDING"
    assert status_name(await shop.finish(payment.payment_id)) == "COMPLETED"
    assert await shop.balance(purchase.payer) == (9_000, 0, 9_000)

    async def sold() -> bool:  # inventory commits the sale on the ledger's capture, apart from payments
        return await shop.stock(purchase.sku) == (4, 0, 1)

    await eventually(sold, "inventory committing the sale")
    again = shop.payments.ApprovePayment(payments_pb2.ReviewPaymentRequest(payment_id=payment.payment_id), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await again
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_declined_review_releases_the_hold_and_is_rejected(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=10_000, stock=5, price_minor=1000)
    payment = await held_for_review(shop, purchase, 1000)

    await shop.payments.DeclinePayment(
        payments_pb2.ReviewPaymentRequest(payment_id=payment.payment_id, reason="stolen card"), timeout=10
    )

    ended = await shop.finish(payment.payment_id)
    assert (status_name(ended), ended.reason) == ("REJECTED", "declined in review: stolen card")
    assert await shop.balance(purchase.payer) == (10_000, 0, 10_000)
    assert await shop.stock(purchase.sku) == (5, 0, 0)
    assert "PaymentDeclined" in await shop.event_types(payment.payment_id)


async def test_a_review_nobody_decides_is_declined_at_its_deadline(shop: Shop) -> None:
    purchase = await shop.setup(funds_minor=10_000, stock=5, price_minor=1000)
    payment = await held_for_review(shop, purchase, 1000)

    ended = await shop.finish(payment.payment_id, timeout_s=REVIEW_TIMEOUT_S + 10)

    assert (status_name(ended), ended.reason) == ("REJECTED", f"not reviewed within {REVIEW_TIMEOUT_S} s")
    assert await shop.balance(purchase.payer) == (10_000, 0, 10_000)


async def test_review_calls_refuse_bad_input_and_other_clients(shop: Shop, tmp_path: Path) -> None:
    purchase = await shop.setup(funds_minor=10_000, stock=5, price_minor=1000)
    payment = await held_for_review(shop, purchase, 1000)
    cases = [
        (payments_pb2.ReviewPaymentRequest(payment_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (payments_pb2.ReviewPaymentRequest(payment_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND),
        (
            payments_pb2.ReviewPaymentRequest(payment_id=payment.payment_id, reason="x" * 201),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        for call in (shop.payments.ApprovePayment, shop.payments.DeclinePayment):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request, timeout=10)
            assert refused.value.code() == code, (request, call)
    client = as_client(shop.cluster, tmp_path / "acme", "acme-shop")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await client.payments.ApprovePayment(
                payments_pb2.ReviewPaymentRequest(payment_id=payment.payment_id), timeout=10
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await client.payments.ListDecisions(payments_pb2.ListDecisionsRequest(), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await client.close()
    assert status_name(await shop.payment(payment.payment_id)) == "UNDER_REVIEW"  # nothing changed
    await shop.payments.DeclinePayment(payments_pb2.ReviewPaymentRequest(payment_id=payment.payment_id), timeout=10)


@pytest.fixture
def paysaga(rules_cluster: LocalCluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    return cli_runner(rules_cluster)


async def test_a_backtest_shows_what_a_candidate_file_would_change_and_changes_nothing(
    shop: Shop, paysaga: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    purchase = await shop.setup(funds_minor=10_000, stock=5, price_minor=1000)
    blocked = await shop.pay(purchase, amount_minor=1000, region="KP")
    allowed = await shop.pay(purchase, amount_minor=1000, region="DE")
    assert status_name(await shop.finish(allowed.payment_id)) == "COMPLETED"
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(
        RULES.replace('request.region == "KP"', 'request.region == "DE"').replace("from {request.region}", "from DE")
    )

    shown = await asyncio.to_thread(paysaga, "rules", "backtest", str(candidate), "--since", "1h")
    as_json = await asyncio.to_thread(paysaga, "--json", "rules", "backtest", str(candidate), "--since", "1h")

    assert shown.returncode == 0, shown.stderr
    assert f"payment {blocked.payment_id}: block -> allow (no rule)" in shown.stdout
    assert f"payment {allowed.payment_id}: allow -> block (sanctioned_region)" in shown.stdout
    report = json.loads(as_json.stdout)
    changes = {change["payment_id"]: change for change in report["changes"]}
    assert (changes[allowed.payment_id]["from"], changes[allowed.payment_id]["to"]) == ("allow", "block")
    assert report["rule_set_sha256"] == sha256(candidate.read_text())
    assert status_name(await shop.payment(blocked.payment_id)) == "REJECTED"  # nothing was touched
    assert status_name(await shop.payment(allowed.payment_id)) == "COMPLETED"
    missing = await asyncio.to_thread(paysaga, "rules", "backtest", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1 and "cannot be read" in missing.stderr


async def test_decisions_and_reviews_from_the_command_line(
    shop: Shop, paysaga: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    purchase = await shop.setup(funds_minor=10_000, stock=5, price_minor=1000)
    blocked = await shop.pay(purchase, amount_minor=1000, region="KP")
    held = await held_for_review(shop, purchase, 1000)

    decisions = await asyncio.to_thread(
        paysaga, "decisions", "--rule", "sanctioned_region", "--payer", purchase.payer, "--since", "1h"
    )
    under_review = await asyncio.to_thread(paysaga, "review", "list")
    declined = await asyncio.to_thread(paysaga, "review", "decline", held.payment_id, "--reason", "chargeback risk")

    assert decisions.returncode == 0, decisions.stderr
    [line] = decisions.stdout.splitlines()
    assert f"payment {blocked.payment_id}  block" in line and "rules: sanctioned_region" in line
    assert f"payment {held.payment_id} UNDER_REVIEW" in under_review.stdout
    assert declined.returncode == 0, declined.stderr
    ended = await shop.finish(held.payment_id)
    assert (status_name(ended), ended.reason) == ("REJECTED", "declined in review: chargeback risk")
    again = await asyncio.to_thread(paysaga, "review", "approve", held.payment_id)
    assert again.returncode == 1 and "FAILED_PRECONDITION" in again.stderr
