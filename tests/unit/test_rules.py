"""The fraud rules below the cluster: reading a rules file, deciding, the rolling statistics, the
spike detector, hot reload, backtest and `paysaga rules check`."""

from __future__ import annotations

import datetime as dt
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from paysaga.ops.client import cli
from services.payments.domain import Action, PaymentLimits, PurchaseRequest, RuleHit, ScoreThresholds, decide
from services.payments.rules.backtest import Recorded, backtest
from services.payments.rules.reload import RulesFileWatcher
from services.payments.rules.ruleset import RulesError, default_rule_set, exact, parse, parse_inputs
from services.payments.rules.screening import RulesInForce, Screening, evaluate
from services.payments.rules.spikes import SpikeDetector, SpikeSettings
from services.payments.rules.stats import TrafficStats

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
PAYER, MERCHANT = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"


def request(amount_minor: int = 1250, region: str = "FR", quantity: int = 1) -> PurchaseRequest:
    return PurchaseRequest("key", PAYER, MERCHANT, "mug", quantity, amount_minor, "EUR", 1, region=region)


def screening(rules: str | None = None, stats: TrafficStats | None = None, **limits: Any) -> Screening:
    stats = stats or TrafficStats(60, 60, NOW.timestamp() - 86400)
    rule_set = parse(rules, "test") if rules is not None else None
    return Screening(RulesInForce(rule_set), stats, SpikeDetector(stats, SpikeSettings()), PaymentLimits(**limits))


# -- the built-in rules: today's cap and velocity limit, with the same words ---------------------


def test_the_built_in_rules_cap_the_amount_and_the_payers_velocity() -> None:
    screen = screening(max_amount_minor=1000, velocity_limit=3, velocity_window_s=60)

    capped = screen.decide(request(1250), 0, NOW)
    allowed = screen.decide(request(999), 2, NOW)
    too_fast = screen.decide(request(999), 3, NOW)

    assert (capped.action, capped.rule, capped.reason) == (
        Action.BLOCK,
        "amount_cap",
        "amount 1250 exceeds the cap of 1000 per payment",
    )
    assert (allowed.action, allowed.hits) == (Action.ALLOW, ())
    assert (too_fast.rule, too_fast.reason) == ("payer_velocity", "payer made 3 payments in the last 60 s (limit 3)")
    assert capped.hits[0].inputs == (("request.amount_minor", "1250"), ("limits.amount_minor_max", "1000"))
    assert capped.rule_set_sha256 == default_rule_set().sha256


# -- reading a file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("rules: [", "not YAML"),
        ("rulez: []", "unknown key 'rulez'"),
        ("rules:\n  - {id: a, when: 'request.amount_minor >', action: block}", "the condition does not parse"),
        ("rules:\n  - {id: a, when: 'request.nope > 1', action: block}", "reads request.nope, which is not an input"),
        ("rules:\n  - {id: a, when: 'customer.age > 1', action: block}", "reads 'customer', which is not an input"),
        ("rules:\n  - {id: a, when: 'request.currency > 1', action: block}", "fails on sample inputs"),
        ("rules:\n  - {id: a, when: 'request.amount_minor', action: block}", "gives int 0, not a bool"),
        ("rules:\n  - {id: a, when: 'true', action: hold}", "action must be allow, review or block"),
        ("rules:\n  - {id: a, when: 'true', action: block, score: 5}", "either an action"),
        ("rules:\n  - {id: a, when: 'true', score: 0}", "score must be a whole number"),
        ("rules:\n  - {id: a, when: 'true', action: block, mode: dry}", "mode must be enforce or shadow"),
        ("rules:\n  - {id: A-1, when: 'true', action: block}", "id must be 1 to 64"),
        ("rules:\n  - {id: a, when: 'true', action: block, reason: '{payer.nope}'}", "reason names {payer.nope}"),
        ("rules:\n  - {id: a, when: 'true', action: block, severity: 3}", "unknown key 'severity'"),
        ("rules:\n  - {id: a, when: 'true', action: block}\n  - {id: a, when: 'false', action: allow}", "used twice"),
        ("score_thresholds: {review: 90, block: 50}\nrules: []", "review (90) is above block (50)"),
    ],
)
def test_a_broken_file_is_refused_with_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(RulesError) as refused:
        parse(text, "rules.yaml")
    assert problem in str(refused.value)
    assert str(refused.value).startswith("rules.yaml: ")


def test_every_problem_of_a_file_is_listed_at_once() -> None:
    text = "rules:\n  - {id: a, when: 'request.nope', action: block}\n  - {id: b, when: 'true', action: hold}"
    with pytest.raises(RulesError) as refused:
        parse(text, "rules.yaml")
    assert "rule a: reads request.nope" in str(refused.value) and "rule b: action must be" in str(refused.value)


def test_strings_in_a_condition_are_not_taken_for_inputs() -> None:
    rule_set = parse("rules:\n  - {id: a, when: 'request.sku == \"payer.nope\"', action: block}", "x")
    assert rule_set.rules[0].reads == ("request.sku",)


# -- deciding ------------------------------------------------------------------------------------

SCORED = """\
score_thresholds: {review: 50, block: 100}
rules:
  - {id: big, when: 'request.amount_minor >= 1000', score: 60, reason: "big: {request.amount_minor}"}
  - {id: bulk, when: 'request.quantity >= 3', score: 60}
  - {id: far, when: 'request.region == "NZ"', action: review, reason: "from {request.region}"}
  - {id: banned, when: 'request.region == "KP"', action: block, mode: shadow}
"""


@pytest.mark.parametrize(
    ("amount_minor", "quantity", "region", "action", "score", "rule"),
    [
        (100, 1, "FR", Action.ALLOW, 0, ""),
        (1000, 1, "FR", Action.REVIEW, 60, "score"),
        (1000, 3, "FR", Action.BLOCK, 120, "score"),
        (100, 1, "NZ", Action.REVIEW, 0, "far"),
        (100, 1, "KP", Action.ALLOW, 0, ""),  # a shadow rule changes nothing
    ],
)
def test_actions_and_scores_make_the_decision(
    amount_minor: int, quantity: int, region: str, action: Action, score: int, rule: str
) -> None:
    decision = screening(SCORED).decide(request(amount_minor, region, quantity), 0, NOW)
    assert (decision.action, decision.score, decision.rule) == (action, score, rule)


def test_a_shadow_hit_is_recorded_as_what_would_have_been() -> None:
    decision = screening(SCORED).decide(request(100, "KP"), 0, NOW)
    [hit] = decision.hits
    assert (hit.rule_id, hit.shadow, decision.action, decision.shadow_action) == (
        "banned",
        True,
        Action.ALLOW,
        Action.BLOCK,
    )


def test_the_strictest_action_wins_and_its_first_rule_gives_the_reason() -> None:
    hits = (
        RuleHit("review_me", False, Action.REVIEW, 0, "look"),
        RuleHit("block_me", False, Action.BLOCK, 0, "no"),
        RuleHit("block_too", False, Action.BLOCK, 0, "no either"),
    )
    decision = decide("sha", hits, ScoreThresholds())
    assert (decision.action, decision.rule, decision.reason) == (Action.BLOCK, "block_me", "no")


def test_an_allow_rule_lets_the_purchase_through_whatever_else_holds() -> None:
    hits = (
        RuleHit("cap", False, Action.BLOCK, 0, "too much"),
        RuleHit("risky", False, None, 500, "risky"),
        RuleHit("trusted", False, Action.ALLOW, 0, "a trusted customer"),
    )
    decision = decide("sha", hits, ScoreThresholds())
    assert (decision.action, decision.rule, decision.score) == (Action.ALLOW, "trusted", 500)
    in_shadow = decide("sha", (hits[0], RuleHit("trusted", True, Action.ALLOW, 0, "")), ScoreThresholds())
    assert (in_shadow.action, in_shadow.shadow_action) == (Action.BLOCK, Action.ALLOW)


def test_a_rule_that_fails_to_evaluate_is_not_held_and_is_alerted(caplog: pytest.LogCaptureFixture) -> None:
    # Fine on both sample inputs (0 and 1000 samples), a division by zero at 7.
    rule_set = parse("rules:\n  - {id: ratio, when: 'request.quantity / (payer.samples - 7) > 2', action: block}", "x")
    inputs = screening().inputs(request(), 0, NOW)
    inputs["payer"]["samples"] = 7
    inputs["request"]["quantity"] = 5
    with caplog.at_level(logging.ERROR):
        decision = evaluate(rule_set, inputs)
    assert decision.action is Action.ALLOW
    assert any(getattr(record, "alert", False) for record in caplog.records)


# -- the rolling statistics ----------------------------------------------------------------------


def attempts(count: int, seed: int) -> list[tuple[float, str, str, str, int, bool]]:
    rng = random.Random(seed)
    start = NOW.timestamp() - 7200
    return [
        (
            start + rng.uniform(0, 7200),
            rng.choice(("p1", "p2")),
            rng.choice(("m1", "m2")),
            rng.choice(("FR", "NZ")),
            rng.randint(100, 100_000),
            rng.random() < 0.9,
        )
        for _ in range(count)
    ]


def figures(stats: TrafficStats) -> list[Any]:
    now_s = NOW.timestamp()
    found: list[Any] = []
    for kind, key in (("payer", "p1"), ("merchant", "m2"), ("region", "NZ")):
        found.append(stats.counts(kind, key, now_s))
        current = stats.bucket_of(now_s)
        found.append(stats.baseline(kind, key, current, stats.bucket_count(kind, key, current)))
    found += [stats.amounts("payer", "p1", 5000, now_s), stats.amounts("merchant", "m2", 5000, now_s)]
    return found


def test_statistics_depend_on_the_attempts_not_on_their_order() -> None:
    events = attempts(2000, seed=7)
    first, second = (TrafficStats(60, 60, NOW.timestamp() - 86400) for _ in range(2))
    for event in events:
        first.add(*event)
    for event in random.Random(8).sample(events, len(events)):
        second.add(*event)
    assert figures(first) == figures(second)


def test_windows_count_attempts_and_amounts_count_accepted_purchases_only() -> None:
    stats = TrafficStats(60, 60, NOW.timestamp() - 86400)
    now_s = NOW.timestamp()
    stats.add(now_s - 30, "p", "m", "FR", 1000, True)
    stats.add(now_s - 1800, "p", "m", "FR", 3000, True)
    stats.add(now_s - 7200, "p", "m", "FR", 5000, False)  # blocked: counts, no amount
    stats.add(now_s - 90_000, "p", "m", "FR", 7000, True)  # older than a day: forgotten

    assert stats.counts("payer", "p", now_s) == {"count_1m": 1, "count_1h": 2, "count_24h": 3}
    amounts = stats.amounts("payer", "p", 3000, now_s)
    assert (amounts["samples"], amounts["amount_mean"], amounts["amount_stddev"]) == (2, 2000.0, 1000.0)
    assert amounts["amount_z"] == 1.0


def test_the_spread_of_large_amounts_is_exact() -> None:
    stats = TrafficStats(60, 60, NOW.timestamp() - 86400)
    for amount in (10**13, 10**13 + 1, 10**13 + 1):
        stats.add(NOW.timestamp() - 5, "p", "m", "FR", amount, True)
    found = stats.amounts("payer", "p", 0, NOW.timestamp())
    assert abs(found["amount_stddev"] - 0.4714) < 0.001 and abs(found["amount_ew_stddev"] - 0.4714) < 0.001


def test_weighted_amounts_read_between_attempts_equal_those_read_once_at_the_end() -> None:
    events = sorted(attempts(600, seed=11))  # in time order, with a few late ones below
    events += [(events[100][0], "p1", "m2", "FR", 777, True), (events[0][0], "p1", "m2", "FR", 999, True)]
    read_often, read_once = (TrafficStats(60, 60, NOW.timestamp() - 86400) for _ in range(2))
    for event in events:
        read_often.add(*event)
        read_once.add(*event)
        read_often.amounts("payer", "p1", 0, event[0])  # fills and reuses the cached sums
    read_often.amounts("merchant", "m2", 0, NOW.timestamp())
    assert figures(read_often) == figures(read_once)


def test_the_weighted_amounts_follow_the_recent_ones() -> None:
    stats = TrafficStats(60, 60, NOW.timestamp() - 86400, half_life_s=3600)
    now_s = NOW.timestamp()
    for _ in range(10):
        stats.add(now_s - 6 * 3600 - 30, "p", "m", "FR", 1000, True)  # six half-lives before: 1/64 the weight
        stats.add(now_s - 30, "p", "m", "FR", 2000, True)
    found = stats.amounts("payer", "p", 0, now_s)
    assert found["amount_mean"] == 1500.0
    assert abs(found["amount_ew_mean"] - (1000 / 64 + 2000) / (1 / 64 + 1)) < 1e-6
    assert 0 < found["amount_ew_stddev"] < found["amount_stddev"]


def test_quantiles_are_within_1_percent() -> None:
    stats = TrafficStats(60, 60, NOW.timestamp() - 86400)
    amounts = [random.Random(3).randint(100, 1_000_000) for _ in range(5000)]
    for index, amount in enumerate(amounts):
        stats.add(NOW.timestamp() - index, "p", "m", "FR", amount, True)
    found = stats.amounts("payer", "p", 0, NOW.timestamp())
    ordered = sorted(amounts)
    for name, q in (("amount_p50", 0.5), ("amount_p90", 0.9), ("amount_p99", 0.99)):
        exact_value = ordered[int(q * (len(ordered) - 1))]
        assert abs(found[name] - exact_value) <= 0.011 * exact_value, name


# -- spikes --------------------------------------------------------------------------------------


def test_a_burst_above_the_baseline_is_a_spike_once_per_bucket_and_stays_active() -> None:
    stats = TrafficStats(1, 30, NOW.timestamp() - 60)
    detector = SpikeDetector(stats, SpikeSettings(z=4, min_count=8, min_buckets=5, hold_buckets=3))
    start = NOW.timestamp() - 30
    for second in range(30):  # a baseline of 2 a second
        for _ in range(2):
            detector.observe(start + second, stats.add(start + second, "p", "m", "NZ", 100, True), {"region": "NZ"})
    assert detector.found == []
    for _ in range(12):  # 12 in one second
        detector.observe(start + 30.5, stats.add(start + 30.5, "p", "m", "NZ", 100, True), {"region": "NZ"})

    [spike] = detector.found
    assert (spike.kind, spike.key, spike.count, spike.baseline_mean) == ("region", "NZ", 8, 2.0)
    assert spike.z >= 4
    assert detector.active("region", "NZ", start + 33) and not detector.active("region", "NZ", start + 35)
    assert not detector.active("region", "FR", start + 31)


def test_a_key_without_a_baseline_has_no_spike() -> None:
    stats = TrafficStats(1, 30, NOW.timestamp() - 86400)
    detector = SpikeDetector(stats, SpikeSettings(z=4, min_count=8, min_buckets=5))
    for _ in range(50):  # a region never seen before: a burst, but nothing to compare it with
        detector.observe(NOW.timestamp(), stats.add(NOW.timestamp(), "p", "m", "CL", 100, True), {"region": "CL"})
    assert detector.found == []
    assert stats.baseline("region", "CL", stats.bucket_of(NOW.timestamp()), 50)["baseline_buckets"] == 0


# -- hot reload ----------------------------------------------------------------------------------


def test_a_changed_file_replaces_the_rules_and_a_broken_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(SCORED)
    rules = RulesInForce(parse(SCORED, str(path)))
    watcher = RulesFileWatcher(path, rules)
    assert not watcher.check()  # the file in force

    good = SCORED + "  - {id: new, when: 'request.region == \"CL\"', action: block}\n"
    path.write_text(good)
    assert watcher.check()
    assert [rule.rule_id for rule in rules.rule_set.rules][-1] == "new"

    path.write_text(good + "  - {id: broken, when: 'request.nope', action: block}\n")
    with caplog.at_level(logging.ERROR):
        assert not watcher.check()
    assert [rule.rule_id for rule in rules.rule_set.rules][-1] == "new"
    [refused] = [record for record in caplog.records if record.getMessage() == "rules.refused"]
    assert "reads request.nope" in refused.problems  # type: ignore[attr-defined]

    path.unlink()
    assert not watcher.check() and rules.rule_set.rules[-1].rule_id == "new"


# -- backtest, recorded inputs and `paysaga rules check` -----------------------------------------


def test_recorded_inputs_read_back_exactly() -> None:
    inputs = screening().inputs(request(), 4, NOW)
    inputs["payer"]["amount_p99"] = 1234.567891234
    flat = {f"{group}.{name}": exact(value) for group, values in inputs.items() for name, value in values.items()}
    assert parse_inputs(flat) == inputs
    with pytest.raises(ValueError, match="is not an input"):
        parse_inputs({"payer.nope": "1"})


def test_a_backtest_counts_what_a_candidate_would_change() -> None:
    screen = screening(SCORED)
    recorded = [
        Recorded("a", Action.ALLOW, screen.inputs(request(100, "FR"), 0, NOW)),
        Recorded("b", Action.REVIEW, screen.inputs(request(100, "NZ"), 0, NOW)),
    ]
    candidate = parse(SCORED.replace('"NZ"', '"FR"'), "candidate")

    result = backtest(candidate, recorded)

    assert (result.decisions, result.changed) == (2, 2)
    assert [(change.payment_id, change.was, change.becomes) for change in result.changes] == [
        ("a", Action.ALLOW, Action.REVIEW),
        ("b", Action.REVIEW, Action.ALLOW),
    ]


def test_rules_check_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, broken = tmp_path / "good.yaml", tmp_path / "broken.yaml"
    good.write_text(SCORED)
    broken.write_text("rules:\n  - {id: a, when: 'request.nope', action: block}\n  - {id: b, when: 'x', score: -1}")

    assert cli.main(["rules", "check", str(good)]) == 0
    assert "4 rules (1 in shadow mode), score thresholds review 50 / block 100" in capsys.readouterr().out
    assert cli.main(["rules", "check", str(broken)]) == 1
    problems = capsys.readouterr().err
    assert "rule a: reads request.nope" in problems and "rule b: score must be" in problems
    assert cli.main(["rules", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot be read" in capsys.readouterr().err
