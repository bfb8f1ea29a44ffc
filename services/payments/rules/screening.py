"""Screening a purchase: its inputs gathered, every rule of the rule set in force evaluated, the
hits made into a decision (services.payments.domain.decide).

A rule whose condition fails to evaluate (a type the sample inputs did not show, a division by
zero) is taken as not held, logged as an alert and counted (paysaga_rule_errors_total): a broken
rule never blocks the purchases it was not meant for, and is seen at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import cel

from paysaga.runtime import metrics
from services.payments.domain import Decision, PaymentLimits, PurchaseRequest, RuleHit, decide, tier_name
from services.payments.rules.ruleset import RuleSet, default_rule_set, limits_inputs, read_inputs, render_reason
from services.payments.rules.spikes import SpikeDetector
from services.payments.rules.stats import TrafficStats

log = logging.getLogger(__name__)
Inputs = Mapping[str, Mapping[str, Any]]


class RulesInForce:
    """The rule set new purchases are screened with; replaced whole by a reload."""

    def __init__(self, rule_set: RuleSet | None = None) -> None:
        self.rule_set = rule_set or default_rule_set()


def evaluate(rule_set: RuleSet, inputs: Inputs) -> Decision:
    """The decision rule_set takes on these inputs (no I/O: what a backtest runs too)."""
    context = cel.Context(variables=dict(inputs))
    hits: list[RuleHit] = []
    for rule in rule_set.rules:
        try:
            held = rule.program.execute(context)
        except Exception as error:  # noqa: BLE001 - any failure of one rule leaves the others to decide
            metrics.RULE_ERRORS.labels(rule.rule_id).inc()
            log.error("rules.evaluation_failed", extra={"alert": True, "rule": rule.rule_id, "error": str(error)})
            continue
        if held is True:
            reason = render_reason(rule.reason, inputs)
            hits.append(RuleHit(rule.rule_id, rule.shadow, rule.action, rule.score, reason, read_inputs(rule, inputs)))
    return decide(rule_set.sha256, tuple(hits), rule_set.thresholds, inputs)


class Screening:
    """Decides each new purchase from its request, the rolling statistics and the rule set in force."""

    def __init__(self, rules: RulesInForce, stats: TrafficStats, spikes: SpikeDetector, limits: PaymentLimits) -> None:
        self.rules = rules
        self.stats = stats
        self.spikes = spikes
        self.limits = limits_inputs(limits)

    def inputs(self, request: PurchaseRequest, velocity: int, now: dt.datetime) -> dict[str, dict[str, Any]]:
        now_s = now.timestamp()
        stats, amount = self.stats, request.amount_minor
        payer, merchant, region = request.payer_account_id, request.merchant_account_id, request.region
        current = stats.bucket_of(now_s)
        region_counts = stats.counts("region", region, now_s)
        return {
            "request": {
                "amount_minor": amount,
                "currency": request.currency,
                "tier": tier_name(request.sla_tier),
                "payer": payer,
                "merchant": merchant,
                "sku": request.sku,
                "quantity": request.quantity,
                "region": region,
            },
            "limits": self.limits,
            "stats": {"ready": stats.ready},
            "payer": {
                "velocity": velocity,
                **stats.counts("payer", payer, now_s),
                **stats.amounts("payer", payer, amount, now_s),
            },
            "merchant": {
                **stats.counts("merchant", merchant, now_s),
                **stats.amounts("merchant", merchant, amount, now_s),
                "spike": self.spikes.active("merchant", merchant, now_s),
            },
            "region": {
                **region_counts,
                **stats.baseline("region", region, current, stats.bucket_count("region", region, current)),
                "spike": self.spikes.active("region", region, now_s),
            },
        }

    def decide(self, request: PurchaseRequest, velocity: int, now: dt.datetime) -> Decision:
        """velocity: the payer's purchases in the velocity window, counted exactly (under the
        payer's lock) by the caller."""
        started = time.perf_counter()
        decision = evaluate(self.rules.rule_set, self.inputs(request, velocity, now))
        metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        metrics.DECISIONS.labels(decision.action.value).inc()
        for hit in decision.hits:
            metrics.RULE_HITS.labels(hit.rule_id, "shadow" if hit.shadow else "enforce").inc()
        return decision
