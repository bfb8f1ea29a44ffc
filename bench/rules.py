"""What a fraud decision costs, measured in the same run as the sagas.

Screening.decide as CreatePayment calls it (every input gathered from the rolling statistics,
then every rule evaluated and the hits made into a decision), with RULE_COUNT rules of every kind,
over statistics warmed with a day of attempts from many payers, merchants and regions. The raw
limit beside it is one evaluation of a trivial CEL condition on this machine, so the decision's
cost reads as a number of such evaluations. Also: reading and checking the rules file (what a
reload costs, on top of the watcher's poll interval).
"""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any

import cel

from bench.stats import Latency
from services.payments.domain import PaymentLimits, PurchaseRequest
from services.payments.rules import reload
from services.payments.rules.ruleset import parse
from services.payments.rules.screening import RulesInForce, Screening
from services.payments.rules.spikes import SpikeDetector, SpikeSettings
from services.payments.rules.stats import HISTORY_S, TrafficStats

TRIVIAL_EVALUATIONS = 50_000
PAYERS, MERCHANTS, REGIONS = 20_000, 500, ("FR", "DE", "NZ", "BR", "US", "IN", "JP", "GB")
RULES = """\
score_thresholds: {review: 60, block: 100}
rules:
  - {id: amount_cap, when: request.amount_minor > limits.amount_minor_max, action: block}
  - {id: payer_velocity, when: payer.velocity >= limits.velocity_limit, action: block}
  - {id: sanctioned, when: 'request.region in ["KP", "IR", "SY"]', action: block}
  - {id: payer_burst, when: payer.count_1m >= 10, action: block}
  - {id: payer_hourly, when: payer.count_1h >= 60, score: 40}
  - {id: payer_daily, when: payer.count_24h >= 300, score: 30}
  - {id: large_for_payer, when: payer.samples >= 5 && request.amount_minor > payer.amount_p99 * 3.0, score: 50}
  - id: unusual_for_payer
    when: payer.samples >= 5 && request.amount_minor > payer.amount_ew_mean + 4.0 * payer.amount_ew_stddev
    score: 30
  - id: large_for_merchant
    when: merchant.samples >= 50 && request.amount_minor > merchant.amount_p99 * 2.0
    score: 40
  - {id: merchant_unusual, when: merchant.samples >= 50 && merchant.amount_z > 5.0, score: 30}
  - {id: merchant_spike, when: merchant.spike, action: review}
  - {id: merchant_busy, when: merchant.count_1m > 1000, score: 20}
  - {id: region_spike, when: region.spike, action: review}
  - {id: region_surge, when: region.baseline_buckets >= 30 && region.rate_z > 6.0, score: 40}
  - {id: bulk, when: request.quantity >= 20, score: 30}
  - {id: bulk_and_large, when: request.quantity >= 5 && request.amount_minor >= 500000, score: 40}
  - {id: critical_large, when: 'request.tier == "critical" && request.amount_minor > 800000', score: 20}
  - {id: odd_currency, when: 'request.currency != "EUR" && request.region in ["FR", "DE"]', score: 20}
  - {id: gift_cards, when: 'request.sku.startsWith("gift-") && payer.samples < 3', action: review, mode: shadow}
  - {id: new_payer_large, when: payer.samples == 0 && request.amount_minor > 100000, score: 30, mode: shadow}
"""


def _warm_screening(rng: random.Random, now_s: float, warm_attempts: int) -> Screening:
    stats = TrafficStats(60, 60, now_s - HISTORY_S)
    for _ in range(warm_attempts):
        stats.add(
            now_s - rng.uniform(0, HISTORY_S),
            f"payer-{rng.randrange(PAYERS)}",
            f"merchant-{rng.randrange(MERCHANTS)}",
            rng.choice(REGIONS),
            rng.randint(100, 200_000),
            rng.random() < 0.97,
        )
    rule_set = parse(RULES, "bench rules")
    return Screening(RulesInForce(rule_set), stats, SpikeDetector(stats, SpikeSettings()), PaymentLimits())


def measure(decisions: int, warm_attempts: int) -> dict[str, Any]:
    rng = random.Random(1)
    now = dt.datetime.now(dt.UTC)
    screening = _warm_screening(rng, now.timestamp(), warm_attempts)
    requests = [
        PurchaseRequest(
            "key",
            f"payer-{rng.randrange(PAYERS)}",
            f"merchant-{rng.randrange(MERCHANTS)}",
            rng.choice(("mug", "gift-10", "lamp")),
            rng.randint(1, 3),
            rng.randint(100, 300_000),
            "EUR",
            rng.randint(1, 3),
            region=rng.choice(REGIONS),
        )
        for _ in range(decisions)
    ]
    latencies_s: list[float] = []
    actions: dict[str, int] = {}
    for request in requests:
        started = time.perf_counter()
        decision = screening.decide(request, rng.randrange(5), now)
        latencies_s.append(time.perf_counter() - started)
        actions[decision.action.value] = actions.get(decision.action.value, 0) + 1
    trivial = cel.compile("request.amount_minor > 0")
    context = cel.Context(variables={"request": {"amount_minor": 1}})
    started = time.perf_counter()
    for _ in range(TRIVIAL_EVALUATIONS):
        trivial.execute(context)
    trivial_us = (time.perf_counter() - started) / TRIVIAL_EVALUATIONS * 1e6
    started = time.perf_counter()
    for _ in range(20):
        parse(RULES, "bench rules")
    parse_ms = (time.perf_counter() - started) / 20 * 1000
    latency = Latency.of(latencies_s)
    return {
        "rules": len(screening.rules.rule_set.rules),
        "decisions": decisions,
        "warm_attempts": warm_attempts,
        "latency_us": {
            "p50_us": latency.p50_ms * 1000,
            "p95_us": latency.p95_ms * 1000,
            "p99_us": latency.p99_ms * 1000,
            "max_us": latency.max_ms * 1000,
        },
        "actions": actions,
        "trivial_cel_us": trivial_us,
        "parse_ms": parse_ms,
        "reload_poll_s": reload.CHECK_INTERVAL_S,
    }
