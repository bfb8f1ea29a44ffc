"""One measured scenario: offer load for a warm-up and a measured window, then summarise it."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.load import TIERS, LoadGenerator, Run, TerminalObserver
from bench.procstats import Usage
from bench.stages import Stage, stages, stored_times
from bench.stats import Latency

SAMPLE_INTERVAL_S = 0.5
PROGRESS_INTERVAL_S = 1.0
PROGRESS_BAR_CHARS = 30


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    warmup_s: float
    concurrency: int = 0  # closed loop when set
    rate_per_s: float = 0.0  # open loop when set
    # Purchases of every tier, some undone; refusals (RESOURCE_EXHAUSTED) are expected, not errors.
    lanes: bool = False

    @property
    def offered(self) -> str:
        if self.concurrency:
            return f"closed loop, {self.concurrency} clients"
        return f"open loop, {self.rate_per_s:g}/s"


@dataclass(frozen=True)
class ScenarioResult:
    scenario: Scenario
    sagas_per_s: float
    ended_in_window: int
    latency: Latency
    outcomes: dict[str, int]
    errors: dict[str, int]
    cpu_ms_per_saga: dict[str, float]
    peak_rss_mib: dict[str, float]
    lanes: dict[str, Any] | None = None
    stages: list[Stage] | None = None

    def as_json(self) -> dict[str, Any]:
        found = {
            "name": self.scenario.name,
            "offered": self.scenario.offered,
            "concurrency": self.scenario.concurrency,
            "rate_per_s": self.scenario.rate_per_s,
            "duration_s": self.scenario.duration_s,
            "warmup_s": self.scenario.warmup_s,
            "sagas_per_s": round(self.sagas_per_s, 1),
            "ended_in_window": self.ended_in_window,
            "latency_ms": {key: round(value, 2) for key, value in vars(self.latency).items()},
            "outcomes": self.outcomes,
            "errors": self.errors,
            "cpu_ms_per_saga": {key: round(value, 3) for key, value in self.cpu_ms_per_saga.items()},
            "peak_rss_mib": {key: round(value, 1) for key, value in self.peak_rss_mib.items()},
        }
        if self.lanes is not None:
            found["lanes"] = self.lanes
        if self.stages is not None:
            found["stages"] = [stage.as_json() for stage in self.stages]
        return found


async def _measure(usage: Usage, window_start_s: float, window_end_s: float) -> None:
    await asyncio.sleep(max(0.0, window_start_s - time.perf_counter()))
    usage.start()
    while time.perf_counter() < window_end_s:
        await asyncio.sleep(min(SAMPLE_INTERVAL_S, max(0.0, window_end_s - time.perf_counter())))
        usage.sample()
    usage.stop()


async def _progress(scenario: Scenario, run: Run, observer: TerminalObserver, started_s: float) -> None:
    """A progress bar on stderr: a line redrawn each second on a terminal, one every 10 s otherwise."""
    total_s = scenario.warmup_s + scenario.duration_s
    interactive = sys.stderr.isatty()
    previous_ended, ticks = 0, 0
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
        ticks += 1
        elapsed_s = time.perf_counter() - started_s
        ended, errors = run.ended, run.errors + run.not_sent
        filled = min(PROGRESS_BAR_CHARS, int(PROGRESS_BAR_CHARS * elapsed_s / total_s))
        line = (
            f"{scenario.name:<10} [{'#' * filled}{'.' * (PROGRESS_BAR_CHARS - filled)}] "
            f"{min(elapsed_s, total_s):5.0f}/{total_s:.0f} s  ended {ended:7d}  "
            f"{(ended - previous_ended) / PROGRESS_INTERVAL_S:6.0f}/s  in flight {observer.in_flight:5d}  "
            f"errors {errors}"
        )
        previous_ended = ended
        if interactive:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
        elif ticks % 10 == 0:
            print(line, file=sys.stderr, flush=True)


async def run_scenario(
    scenario: Scenario, generator: LoadGenerator, observer: TerminalObserver, pids: dict[str, int]
) -> ScenarioResult:
    run = Run()
    started_s = time.perf_counter()
    window_start_s = started_s + scenario.warmup_s
    window_end_s = window_start_s + scenario.duration_s
    usage = Usage.of(pids)
    measuring = asyncio.create_task(_measure(usage, window_start_s, window_end_s))
    progress = asyncio.create_task(_progress(scenario, run, observer, started_s))
    try:
        if scenario.concurrency:
            await generator.closed_loop(run, scenario.concurrency, window_end_s)
        else:
            await generator.open_loop(run, scenario.rate_per_s, window_end_s)
        await measuring
    finally:
        progress.cancel()
        if sys.stderr.isatty():
            print(file=sys.stderr)
    result = summarise(scenario, run, usage, window_start_s, window_end_s)
    return dataclasses.replace(result, stages=await stage_latencies(observer, run, window_start_s, window_end_s))


async def stage_latencies(
    observer: TerminalObserver, run: Run, window_start_s: float, window_end_s: float
) -> list[Stage]:
    """The hops of the purchases created in the window that completed straight away (none undone)."""
    straight = [
        saga
        for saga in run.sagas
        if window_start_s <= saga.created_s < window_end_s
        and saga.status == "COMPLETED"
        and not saga.follow_up
        and saga.payment_id
    ]
    if not straight:
        return []
    created_at = {saga.payment_id: saga.created_unix_s for saga in straight}
    since = dt.datetime.fromtimestamp(min(created_at.values()) - 1.0, dt.UTC)
    return stages(created_at, await stored_times(observer.client, since, set(created_at)))


def summarise(scenario: Scenario, run: Run, usage: Usage, window_start_s: float, window_end_s: float) -> ScenarioResult:
    ended_in_window = [
        saga for saga in run.sagas if saga.ended_s is not None and window_start_s <= saga.ended_s < window_end_s
    ]
    created_in_window = [saga for saga in run.sagas if window_start_s <= saga.created_s < window_end_s]
    latencies = [saga.latency_s for saga in created_in_window if saga.latency_s is not None]
    errors = Counter(saga.error for saga in run.sagas if saga.error)
    lanes = None
    if scenario.lanes:
        lanes = lanes_summary(scenario, run, window_start_s, window_end_s)
        errors.pop("RESOURCE_EXHAUSTED", None)  # admission by tier, reported per tier
    if run.not_sent:
        errors["NOT_SENT_TOO_MANY_IN_FLIGHT"] = run.not_sent
    count = len(ended_in_window) or 1
    cpu_ms = {name: process.cpu_s * 1000 / count for name, process in usage.processes.items()}
    cpu_ms["total"] = usage.total_cpu_s * 1000 / count
    return ScenarioResult(
        scenario=scenario,
        sagas_per_s=len(ended_in_window) / scenario.duration_s,
        ended_in_window=len(ended_in_window),
        latency=Latency.of(latencies),
        outcomes=dict(Counter(f"{saga.intent.value}->{saga.status or 'none'}" for saga in created_in_window)),
        errors=dict(errors),
        cpu_ms_per_saga=cpu_ms,
        peak_rss_mib={name: process.peak_rss_bytes / 2**20 for name, process in usage.processes.items()},
        lanes=lanes,
    )


def lanes_summary(scenario: Scenario, run: Run, window_start_s: float, window_end_s: float) -> dict[str, Any]:
    """Per tier: purchases that ended in the window (per s), the create-to-terminal latency of
    those created in it (not counting the undone ones) and how much of it CreatePayment took, and
    the refusals; and the compensations' latency, from the cancel or refund to its terminal event."""
    in_window = [saga for saga in run.sagas if window_start_s <= saga.created_s < window_end_s]
    tiers = {}
    for tier in TIERS:
        ended = [
            saga
            for saga in run.sagas
            if saga.tier == tier and saga.ended_s is not None and window_start_s <= saga.ended_s < window_end_s
        ]
        plain = [saga for saga in in_window if saga.tier == tier and not saga.follow_up]
        latencies = [saga.latency_s for saga in plain if saga.latency_s is not None]
        latency = Latency.of(latencies)
        create = Latency.of([saga.accepted_s - saga.created_s for saga in plain if saga.accepted_s is not None])
        tiers[tier] = {
            "offered": sum(saga.tier == tier for saga in in_window),
            "ended_per_s": round(len(ended) / scenario.duration_s, 1),
            "completed_per_s": round(sum(saga.status == "COMPLETED" for saga in ended) / scenario.duration_s, 1),
            "refused": sum(saga.tier == tier and saga.error == "RESOURCE_EXHAUSTED" for saga in in_window),
            "p50_ms": round(latency.p50_ms, 1),
            "p99_ms": round(latency.p99_ms, 1),
            "create_p50_ms": round(create.p50_ms, 1),
            "create_p99_ms": round(create.p99_ms, 1),
        }
    completed = sum(entry["completed_per_s"] for entry in tiers.values())
    undone = [saga for saga in in_window if saga.compensation_s is not None]
    compensation = Latency.of([saga.compensation_s for saga in undone if saga.compensation_s is not None])
    return {
        "tiers": tiers,
        "standard_share_of_completed": round(tiers["standard"]["completed_per_s"] / completed, 3) if completed else 0.0,
        "compensations": {
            "count": len(undone),
            "outcomes": dict(Counter(f"{saga.follow_up}->{saga.final_status}" for saga in undone)),
            "p50_ms": round(compensation.p50_ms, 1),
            "p99_ms": round(compensation.p99_ms, 1),
            "max_ms": round(compensation.max_ms, 1),
        },
    }
