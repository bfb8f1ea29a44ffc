"""The benchmark's report: a JSON document, and the same as tables for a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.limits import ECHO_RPC, JETSTREAM_PUBLISH, RawLimit
from bench.oauth import CheckCost
from bench.reconcile import lines as reconcile_lines
from bench.scenarios import ScenarioResult
from bench.skeleton import NAME as SKELETON
from paysaga.ops.checks.invariants import Report


def _limit(limit: RawLimit) -> dict[str, Any]:
    entry = {
        "name": limit.name,
        "concurrency": limit.concurrency,
        "per_s": round(limit.rate_per_s, 1),
        "latency_ms": {key: round(value, 3) for key, value in vars(limit.latency).items()},
    }
    if limit.cpu_percent:
        entry["cpu_percent"] = dict(limit.cpu_percent)
    return entry


def _ratio(sagas_per_s: float, limit_per_s: float) -> float | None:
    return round(sagas_per_s / limit_per_s, 4) if limit_per_s else None


def build(
    machine: dict[str, Any],
    raw: Sequence[RawLimit],
    results: Sequence[ScenarioResult],
    found: Report,
    oauth: tuple[RawLimit, CheckCost] | None = None,
    rules: dict[str, Any] | None = None,
    reconciliation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    echo_per_s = max((limit.rate_per_s for limit in raw if limit.name == ECHO_RPC), default=0.0)
    publish_per_s = max((limit.rate_per_s for limit in raw if limit.name == JETSTREAM_PUBLISH), default=0.0)
    skeleton_per_s = max((limit.rate_per_s for limit in raw if limit.name == SKELETON), default=0.0)
    scenarios = []
    for result in results:
        entry = result.as_json()
        entry["ratios"] = {
            "sagas_per_echo_rpc": _ratio(result.sagas_per_s, echo_per_s),
            "sagas_per_jetstream_publish": _ratio(result.sagas_per_s, publish_per_s),
            "sagas_per_skeleton_saga": _ratio(result.sagas_per_s, skeleton_per_s),
        }
        scenarios.append(entry)
    built = {
        "machine": machine,
        "raw_limits": [_limit(limit) for limit in raw],
        "scenarios": scenarios,
        "invariants": {"ok": found.ok, "violations": found.violations[:50], "payments": found.payments_by_status},
    }
    if oauth is not None:
        endpoint, checks = oauth
        echo = next((limit for limit in raw if limit.name == ECHO_RPC), None)
        built["oauth"] = {
            "token_endpoint": _limit(endpoint),
            "tokens_per_echo_rpc": _ratio(endpoint.rate_per_s, echo.rate_per_s) if echo else None,
            "checks_per_call": checks.as_json(),
        }
    if rules is not None:
        built["rules"] = rules
    if reconciliation is not None:
        built["reconciliation"] = reconciliation
    return built


def clean(result: dict[str, Any]) -> bool:
    """No errors other than the intended business failures, and every invariant holds."""
    reconciled = result.get("reconciliation", {}).get("verdict", "reconciled") == "reconciled"
    return (
        reconciled
        and bool(result["invariants"]["ok"])
        and not any(scenario["errors"] for scenario in result["scenarios"])
    )


def _rows(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [list(map(str, header)), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[index]) for row in cells) for index in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if index else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items()))


def _cpu_line(limit: dict[str, Any], cpus: int) -> str:
    """Whether the processes of a limit saturated the machine: their CPU against all it has."""
    used = limit["cpu_percent"]
    shares = ", ".join(f"{name} {percent:.0f}" for name, percent in sorted(used.items()))
    return f"  {limit['name']} CPU, % of one core: {shares}; total {sum(used.values()):.0f} of {100 * cpus}"


def table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"paysaga benchmark at {machine['commit']}, {machine['measured_at']}",
        f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB, {machine['os']}, "
        f"Python {machine['python']}, {machine['nats_server']}",
        "",
        "Raw limits of this machine (same run)",
    ]
    lines += _rows(
        ["", "concurrency", "per s", "p50 ms", "p99 ms"],
        [
            [
                limit["name"],
                limit["concurrency"],
                f"{limit['per_s']:.0f}",
                f"{limit['latency_ms']['p50_ms']:.2f}",
                f"{limit['latency_ms']['p99_ms']:.2f}",
            ]
            for limit in result["raw_limits"]
        ],
    )
    lines += [_cpu_line(limit, machine["cpus"]) for limit in result["raw_limits"] if limit.get("cpu_percent")]
    for scenario in result["scenarios"]:
        latency = scenario["latency_ms"]
        ratios = scenario["ratios"]
        lines += [
            "",
            f"Scenario {scenario['name']}: {scenario['offered']}, {scenario['duration_s']:g} s measured "
            f"after {scenario['warmup_s']:g} s warm-up",
            f"  completed sagas/s   {scenario['sagas_per_s']:.1f}  ({scenario['ended_in_window']} ended in the window)",
            f"  create->terminal    p50 {latency['p50_ms']:.1f} ms  p95 {latency['p95_ms']:.1f} ms  "
            f"p99 {latency['p99_ms']:.1f} ms  max {latency['max_ms']:.1f} ms",
            f"  ratios              {ratios['sagas_per_echo_rpc']} sagas per echo RPC, "
            f"{ratios['sagas_per_jetstream_publish']} sagas per JetStream publish+ack, "
            f"{ratios['sagas_per_skeleton_saga']} sagas per skeleton saga",
            f"  outcomes            {_counts(scenario['outcomes'])}",
            f"  errors              {_counts(scenario['errors']) or 'none'}",
        ]
        if scenario.get("stages"):
            lines += _stage_lines(scenario["stages"])
        if "lanes" in scenario:
            lines += _lanes_lines(scenario["lanes"])
        processes = sorted(scenario["peak_rss_mib"])
        lines += [
            "  " + line
            for line in _rows(
                ["process", "CPU ms/saga", "peak RSS MiB"],
                [
                    [name, f"{scenario['cpu_ms_per_saga'][name]:.2f}", f"{scenario['peak_rss_mib'][name]:.0f}"]
                    for name in processes
                ]
                + [["total", f"{scenario['cpu_ms_per_saga']['total']:.2f}", ""]],
            )
        ]
    if "oauth" in result:
        lines += _oauth_lines(result["oauth"], machine["cpus"])
    if "rules" in result:
        lines += _rules_lines(result["rules"])
    if "reconciliation" in result:
        lines += reconcile_lines(result["reconciliation"])
    invariants = result["invariants"]
    lines += [
        "",
        f"Invariants after the run: {'hold' if invariants['ok'] else 'VIOLATED'}; payments {invariants['payments']}",
    ]
    lines += [f"  {violation}" for violation in invariants["violations"]]
    return "\n".join(lines)


def _stage_lines(stages: list[dict[str, Any]]) -> list[str]:
    """Each hop of the purchases that completed straight away, by JetStream's stored times."""
    rows = [[stage["stage"], stage["sagas"], f"{stage['p50_ms']:.1f}", f"{stage['p99_ms']:.1f}"] for stage in stages]
    return ["  " + line for line in _rows(["stage (event stored)", "sagas", "p50 ms", "p99 ms"], rows)]


def _lanes_lines(lanes: dict[str, Any]) -> list[str]:
    compensations = lanes["compensations"]
    rows = [
        [
            tier,
            entry["offered"],
            f"{entry['completed_per_s']:.1f}",
            f"{entry['ended_per_s']:.1f}",
            entry["refused"],
            f"{entry['p50_ms']:.0f}",
            f"{entry['p99_ms']:.0f}",
            f"{entry['create_p50_ms']:.0f}",
            f"{entry['create_p99_ms']:.0f}",
        ]
        for tier, entry in lanes["tiers"].items()
    ]
    return [
        "  " + line
        for line in _rows(
            ["tier", "offered", "completed/s", "ended/s", "refused", "p50 ms", "p99 ms", "create p50", "create p99"],
            rows,
        )
    ] + [
        f"  standard share      {100 * lanes['standard_share_of_completed']:.0f}% of what completed",
        f"  compensations       {compensations['count']}: p50 {compensations['p50_ms']:.0f} ms  "
        f"p99 {compensations['p99_ms']:.0f} ms  max {compensations['max_ms']:.0f} ms  "
        f"({_counts(compensations['outcomes'])})",
    ]


def _oauth_lines(oauth: dict[str, Any], cpus: int) -> list[str]:
    endpoint, checks = oauth["token_endpoint"], oauth["checks_per_call"]
    latency = endpoint["latency_ms"]
    cpu_ms_per_token = 10 * sum(endpoint["cpu_percent"].values()) / endpoint["per_s"] if endpoint["per_s"] else 0.0
    return [
        "",
        "OAuth",
        f"  token endpoint      {endpoint['per_s']:.0f} tokens/s from {endpoint['concurrency']} clients  "
        f"p50 {latency['p50_ms']:.2f} ms  p99 {latency['p99_ms']:.2f} ms  "
        f"({oauth['tokens_per_echo_rpc']} tokens per echo RPC; "
        f"authorization server {cpu_ms_per_token:.2f} ms CPU/token)",
        f"  per call            {checks['client_token_us']:.1f} us to authorize a client's call (token, "
        f"revocation list, certificate binding) vs {checks['service_identity_us']:.1f} us for one of our "
        f"services: {checks['token_and_binding_us']:.1f} us of CPU per call for the token",
        f"  first use           {checks['first_use_us']:.1f} us for a token's first call (its ES256 signature "
        "and claims; remembered until it expires)",
    ]


def _rules_lines(rules: dict[str, Any]) -> list[str]:
    latency = rules["latency_us"]
    trivial_us = rules["trivial_cel_us"]
    return [
        "",
        "Fraud rules",
        f"  decision            p50 {latency['p50_us']:.0f} us  p99 {latency['p99_us']:.0f} us  "
        f"max {latency['max_us']:.0f} us with {rules['rules']} rules over {rules['warm_attempts']} attempts of "
        f"statistics (target p99 <= 1000 us: {latency['p99_us'] / 1000:.2f} of it); "
        f"actions {_counts(rules['actions'])}",
        f"  raw limit           {trivial_us:.2f} us for one trivial CEL evaluation: a decision at p50 costs "
        f"{latency['p50_us'] / trivial_us:.0f} of them (mostly gathering the inputs)",
        f"  reload              {rules['parse_ms']:.1f} ms to read and check the file, after a poll every "
        f"{rules['reload_poll_s']:g} s: live within {rules['reload_poll_s'] + rules['parse_ms'] / 1000:.2f} s "
        "(target 2 s)",
    ]
