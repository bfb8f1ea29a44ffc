"""A rules file, read and checked: conditions in CEL (github.com/google/cel-spec), no eval.

    score_thresholds: {review: 50, block: 100}   # optional; these are the defaults
    rules:
      - id: amount_cap                             # [a-z0-9_], unique
        when: request.amount_minor > limits.amount_minor_max
        action: block                              # allow, review or block ...
        reason: "amount {request.amount_minor} exceeds the cap of {limits.amount_minor_max}"
      - id: unusual_amount_for_payer
        when: payer.samples >= 10 && request.amount_minor > payer.amount_p99 * 3.0
        score: 60                                  # ... or a score that adds up to the thresholds
        mode: shadow                               # enforce (the default) or shadow

A file is refused as a whole, with every problem found and where, when it is not YAML, has a key
this module does not know, a condition that does not parse, reads an input that does not exist
(INPUTS lists them) or does not give a bool on sample inputs, or a reason with an unknown
{placeholder}. Nothing of a refused file is ever used.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel
import yaml

from services.payments.domain import Action, PaymentLimits, ScoreThresholds

RULES_MAX = 200
# A reason is a payment's reason when its rule decides: the room left for the filled-in inputs.
REASON_MAX_CHARS = 300
_RULE_ID = re.compile(r"[a-z0-9_]{1,64}")
_RULE_KEYS = {"id", "when", "action", "score", "reason", "mode", "description"}
_TOP_KEYS = {"rules", "score_thresholds"}
_MODES = ("enforce", "shadow")

# Every input a condition may read, by group and name, with its CEL type.
_COUNTS = {"count_1m": int, "count_1h": int, "count_24h": int}
_AMOUNTS = {
    "samples": int,
    "amount_mean": float,
    "amount_stddev": float,
    "amount_p50": float,
    "amount_p90": float,
    "amount_p99": float,
    "amount_z": float,
    "amount_ew_mean": float,
    "amount_ew_stddev": float,
}
INPUTS: Mapping[str, Mapping[str, type]] = {
    "request": {
        "amount_minor": int,
        "currency": str,
        "tier": str,
        "payer": str,
        "merchant": str,
        "sku": str,
        "quantity": int,
        "region": str,
    },
    "limits": {"amount_minor_max": int, "velocity_limit": int, "velocity_window_s": float},
    "payer": {"velocity": int, **_COUNTS, **_AMOUNTS},
    "merchant": {**_COUNTS, **_AMOUNTS, "spike": bool},
    "stats": {"ready": bool},
    "region": {
        **_COUNTS,
        "baseline_mean": float,
        "baseline_stddev": float,
        "baseline_buckets": int,
        "rate_z": float,
        "spike": bool,
    },
}
# Sample inputs a condition is tried on when the file is read: one of zeros, one of typical values
# (between them most branches of && and || are taken).
_SAMPLES = (
    {group: {name: kind() for name, kind in fields.items()} for group, fields in INPUTS.items()},
    {
        group: {name: {int: 1000, float: 1000.0, str: "FR", bool: True}[kind] for name, kind in fields.items()}
        for group, fields in INPUTS.items()
    },
)
_STRING = re.compile(r"""'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*\"""", re.DOTALL)
_REFERENCE = re.compile(r"\b([A-Za-z_]\w*)\s*\.\s*([A-Za-z_]\w*)")
_MACRO_VARIABLE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


class RulesError(ValueError):
    """A rules file that cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class Rule:
    rule_id: str
    source: str
    program: cel.Program
    # The inputs the condition reads ("payer.amount_p99"), recorded with each hit.
    reads: tuple[str, ...]
    action: Action | None
    score: int
    reason: str
    shadow: bool


@dataclass(frozen=True)
class RuleSet:
    sha256: str
    rules: tuple[Rule, ...]
    thresholds: ScoreThresholds
    # Where the rules came from: a file's path, or "built-in defaults".
    origin: str


def parse(text: str | bytes, origin: str) -> RuleSet:
    """The rule set a file's content describes; RulesError with every problem found if it is not
    usable."""
    data = text.encode() if isinstance(text, str) else text
    try:
        document = yaml.safe_load(data)
    except yaml.YAMLError as error:
        raise RulesError(f"{origin}: not YAML: {error}") from None
    problems: list[str] = []
    if not isinstance(document, dict):
        raise RulesError(f"{origin}: a mapping with a 'rules' list was expected")
    problems += [
        f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})" for key in document if key not in _TOP_KEYS
    ]
    thresholds = _thresholds(document.get("score_thresholds", {}), problems)
    entries = document.get("rules")
    if not isinstance(entries, list):
        problems.append("'rules' must be a list of rules")
        entries = []
    if len(entries) > RULES_MAX:
        problems.append(f"{len(entries)} rules; at most {RULES_MAX}")
    rules: list[Rule] = []
    for index, entry in enumerate(entries):
        rule = _rule(entry, f"rules[{index}]", problems)
        if rule is not None:
            if any(known.rule_id == rule.rule_id for known in rules):
                problems.append(f"rules[{index}]: id {rule.rule_id!r} is used twice")
            rules.append(rule)
    if problems:
        raise RulesError(f"{origin}: " + "; ".join(problems))
    return RuleSet(hashlib.sha256(data).hexdigest(), tuple(rules), thresholds, origin)


def _thresholds(value: Any, problems: list[str]) -> ScoreThresholds:
    default = ScoreThresholds()
    if not isinstance(value, dict):
        problems.append("score_thresholds must be a mapping with review and block")
        return default
    problems += [f"score_thresholds: unknown key {key!r}" for key in value if key not in ("review", "block")]
    review, block = value.get("review", default.review), value.get("block", default.block)
    if not all(isinstance(number, int) and not isinstance(number, bool) and number > 0 for number in (review, block)):
        problems.append("score_thresholds: review and block are positive integers")
        return default
    if review > block:
        problems.append(f"score_thresholds: review ({review}) is above block ({block})")
    return ScoreThresholds(review, block)


def _rule(entry: Any, where: str, problems: list[str]) -> Rule | None:
    if not isinstance(entry, dict):
        problems.append(f"{where}: a rule is a mapping with id, when and action or score")
        return None
    before = len(problems)
    problems += [
        f"{where}: unknown key {key!r} (known: {', '.join(sorted(_RULE_KEYS))})"
        for key in entry
        if key not in _RULE_KEYS
    ]
    rule_id = entry.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.fullmatch(rule_id):
        problems.append(f"{where}: id must be 1 to 64 of a-z, 0-9 and _, got {rule_id!r}")
        rule_id = "?"
    where = f"rule {rule_id}"
    action, score = _outcome(entry, where, problems)
    mode = entry.get("mode", "enforce")
    if mode not in _MODES:
        problems.append(f"{where}: mode must be enforce or shadow, got {mode!r}")
    reason = entry.get("reason", f"rule {rule_id}")
    if not isinstance(reason, str) or len(reason) > REASON_MAX_CHARS:
        problems.append(f"{where}: reason must be text of at most {REASON_MAX_CHARS} characters")
        reason = ""
    for placeholder in _PLACEHOLDER.findall(reason):
        if _field_type(placeholder) is None:
            problems.append(f"{where}: reason names {{{placeholder}}}, which is not an input")
    source = entry.get("when")
    if not isinstance(source, str) or not source.strip():
        problems.append(f"{where}: 'when' must be a CEL condition")
        return None
    compiled = _compile(source, where, problems)
    if compiled is None or len(problems) > before:
        return None
    program, reads = compiled
    return Rule(rule_id, source, program, reads, action, score, reason, mode == "shadow")


def _outcome(entry: dict[str, Any], where: str, problems: list[str]) -> tuple[Action | None, int]:
    if ("action" in entry) == ("score" in entry):
        problems.append(f"{where}: give either an action (allow, review, block) or a score, not both or neither")
        return None, 0
    if "action" in entry:
        try:
            return Action(entry["action"]), 0
        except ValueError:
            problems.append(f"{where}: action must be allow, review or block, got {entry['action']!r}")
            return None, 0
    score = entry["score"]
    if not isinstance(score, int) or isinstance(score, bool) or not 0 < score <= 1_000_000:
        problems.append(f"{where}: score must be a whole number from 1 to 1000000, got {score!r}")
        return None, 0
    return None, score


def _compile(source: str, where: str, problems: list[str]) -> tuple[cel.Program, tuple[str, ...]] | None:
    try:
        program = cel.compile(source)
    except ValueError as error:
        problems.append(f"{where}: the condition does not parse: {error}")
        return None
    code = _STRING.sub('""', source)
    bound = set(_MACRO_VARIABLE.findall(code))
    unknown = sorted(set(program.variables()) - set(INPUTS) - bound)
    problems += [f"{where}: reads {name!r}, which is not an input (inputs: {', '.join(INPUTS)})" for name in unknown]
    reads: list[str] = []
    for group, name in _REFERENCE.findall(code):
        if group in INPUTS:
            path = f"{group}.{name}"
            if _field_type(path) is None:
                problems.append(f"{where}: reads {path}, which is not an input ({group}: {', '.join(INPUTS[group])})")
            elif path not in reads:
                reads.append(path)
    if unknown or any(problem.startswith(f"{where}: reads") for problem in problems):
        return None
    for sample in _SAMPLES:
        try:
            result = program.execute(sample)
        except Exception as error:  # noqa: BLE001 - the library raises several kinds for type errors
            problems.append(f"{where}: the condition fails on sample inputs: {error}")
            return None
        if not isinstance(result, bool):
            problems.append(f"{where}: the condition gives {type(result).__name__} {result!r}, not a bool")
            return None
    return program, tuple(reads)


def _field_type(path: str) -> type | None:
    group, _, name = path.partition(".")
    return INPUTS.get(group, {}).get(name)


def render_reason(template: str, inputs: Mapping[str, Mapping[str, Any]]) -> str:
    """A reason with its {group.name} placeholders filled in from the inputs."""
    return _PLACEHOLDER.sub(lambda match: shown(_lookup(inputs, match.group(1))), template)


def _lookup(inputs: Mapping[str, Mapping[str, Any]], path: str) -> Any:
    group, _, name = path.partition(".")
    return inputs[group][name]


def read_inputs(rule: Rule, inputs: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, str], ...]:
    return tuple((path, shown(_lookup(inputs, path))) for path in rule.reads)


def shown(value: Any) -> str:
    """An input as a person reads it: 1234.5, not 1234.5000000001 or 1.2345e+03."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def exact(value: Any) -> str:
    """An input as text that reads back as the same value (parse_inputs): what a backtest replays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def parse_inputs(flat: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Recorded inputs ("payer.amount_p99": "1830.5", as exact() wrote them) as the rules take
    them; ValueError for an input that is not one, or whose text is not of its type."""
    inputs: dict[str, dict[str, Any]] = {group: {} for group in INPUTS}
    for path, text in flat.items():
        kind = _field_type(path)
        if kind is None:
            raise ValueError(f"{path} is not an input")
        group, _, name = path.partition(".")
        if kind is bool:
            if text not in ("true", "false"):
                raise ValueError(f"{path}: {text!r} is not true or false")
            inputs[group][name] = text == "true"
        else:
            inputs[group][name] = kind(text)
    return inputs


DEFAULT_RULES = """\
# The built-in rules: the amount cap and the payer's velocity limit, with the limits from the
# settings (PAYSAGA_MAX_AMOUNT_MINOR, PAYSAGA_VELOCITY_LIMIT, PAYSAGA_VELOCITY_WINDOW_S).
rules:
  - id: amount_cap
    when: request.amount_minor > limits.amount_minor_max
    action: block
    reason: "amount {request.amount_minor} exceeds the cap of {limits.amount_minor_max} per payment"
  - id: payer_velocity
    when: payer.velocity >= limits.velocity_limit
    action: block
    reason: >-
      payer made {payer.velocity} payments in the last {limits.velocity_window_s} s
      (limit {limits.velocity_limit})
"""


def default_rule_set() -> RuleSet:
    """The rules in force without a rules file: today's cap and velocity limit."""
    return parse(DEFAULT_RULES, "built-in defaults")


def limits_inputs(limits: PaymentLimits) -> dict[str, Any]:
    return {
        "amount_minor_max": limits.max_amount_minor,
        "velocity_limit": limits.velocity_limit,
        "velocity_window_s": float(limits.velocity_window_s),
    }
