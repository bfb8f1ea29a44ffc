"""Backtest: recorded decisions replayed through a candidate rule set, and what would change.

Each decision recorded every input the rules were given (the request, the limits, the rolling
statistics and the spikes as they were at that moment), so a candidate file is judged on exactly
what the rules in force saw, without touching anything: no statistic is recomputed, no payment
or decision changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.payments.domain import Action
from services.payments.rules.ruleset import RuleSet
from services.payments.rules.screening import evaluate


@dataclass(frozen=True)
class Recorded:
    payment_id: str
    action: Action
    inputs: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Change:
    payment_id: str
    was: Action
    becomes: Action
    # The candidate's rules that fired (enforced), and its reason when it reviews or blocks.
    rules: tuple[str, ...]
    reason: str


@dataclass
class Backtest:
    rule_set_sha256: str
    decisions: int = 0
    transitions: Counter[tuple[Action, Action]] = field(default_factory=Counter)
    changes: list[Change] = field(default_factory=list)
    # How often each of the candidate's shadow rules would have fired.
    shadow_hits: Counter[str] = field(default_factory=Counter)

    @property
    def changed(self) -> int:
        return sum(count for (was, becomes), count in self.transitions.items() if was is not becomes)


def backtest(candidate: RuleSet, recorded: Iterable[Recorded]) -> Backtest:
    result = Backtest(candidate.sha256)
    for decision in recorded:
        replayed = evaluate(candidate, decision.inputs)
        result.decisions += 1
        result.transitions[(decision.action, replayed.action)] += 1
        result.shadow_hits.update(hit.rule_id for hit in replayed.hits if hit.shadow)
        if replayed.action is not decision.action:
            fired = tuple(hit.rule_id for hit in replayed.hits if not hit.shadow)
            result.changes.append(Change(decision.payment_id, decision.action, replayed.action, fired, replayed.reason))
    return result
