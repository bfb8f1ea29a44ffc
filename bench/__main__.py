"""Run the benchmark against a fresh local cluster and print the report (table and JSON file).

python3 scripts/dev.py bench                       # every scenario, 60 s each
python3 scripts/dev.py bench -- --duration-s 20    # shorter
python3 scripts/dev.py bench -- --scenario latency --rate 300
python3 scripts/dev.py bench -- --scenario lanes --lanes-rate 400
python3 scripts/dev.py bench -- --atomic-batch-min 0    # the relays and the skeleton without atomic batches

Besides the scenarios: the raw limits of the machine (with the relay draining a backlog:
bench/backlog.py), the cost of a fraud decision with 20 rules
(bench/rules.py), of OAuth (bench/oauth.py), and the nightly reconciliation of 100,000 purchases
(bench/reconcile.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import backlog, limits, machine, oauth, reconcile, report, rules, skeleton
from bench.load import Lanes, LoadGenerator, Mix, TerminalObserver, create_fixtures
from bench.scenarios import Scenario, ScenarioResult, run_scenario
from paysaga.ops.checks import invariants
from paysaga.ops.cluster.localcluster import ClusterPorts, LocalCluster
from paysaga.ops.pki import rotation
from paysaga.runtime.messaging.windows import ATOMIC_BATCH_MIN
from paysaga.runtime.service_process import run_on_fast_loop

REPO = Path(__file__).resolve().parent.parent
ECHO_CONCURRENCY = 16
PUBLISH_IN_FLIGHT = (1, 16)
SKELETON_IN_FLIGHT = 64
# Longer than the saga deadline plus its compensation, so every purchase has ended by then.
SETTLE_TIMEOUT_S = 120.0
SETTLE_POLL_S = 2.0
SCENARIOS = ("throughput", "latency", "lanes")
LANES_RATE_DEFAULT = 300.0
LATENCY_RATE_DEFAULT = 200.0
# Events in the outbox the relay's backlog limit drains: a second or two of work.
BACKLOG_EVENTS = 5000


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--scenario",
        choices=[*SCENARIOS, "all"],
        default="all",
        help="throughput: closed loop with --concurrency clients; latency: open loop at --rate; lanes: open loop "
        "at --lanes-rate, every tier, cancels and refunds (default: all, in that order)",
    )
    parser.add_argument("--duration-s", type=float, default=60.0, help="measured seconds per scenario (default 60)")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="unmeasured seconds before each (default 5)")
    parser.add_argument("--concurrency", type=int, default=256, help="closed-loop clients (default 256)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="the latency scenario's purchases per second (default: half of what the throughput scenario "
        f"completed, or {LATENCY_RATE_DEFAULT:g} without it)",
    )
    parser.add_argument(
        "--atomic-batch-min",
        type=int,
        default=ATOMIC_BATCH_MIN,
        help="the relays (and the skeleton) publish this many events or more as one atomic batch "
        f"(default {ATOMIC_BATCH_MIN}; 0: never)",
    )
    parser.add_argument(
        "--lanes-rate",
        type=float,
        default=0.0,
        help="the lanes scenario's purchases per second (default: twice what the throughput scenario completed, "
        f"or {LANES_RATE_DEFAULT:g} without it)",
    )
    parser.add_argument("--mix", type=Mix.parse, default=Mix(), help="percent success,out-of-stock,no-funds (90,5,5)")
    parser.add_argument("--wallets", type=int, default=256, help="funded wallets the purchases spread over")
    parser.add_argument("--skus", type=int, default=64, help="stocked items the purchases spread over")
    parser.add_argument("--limits-duration-s", type=float, default=5.0, help="seconds per raw-limit measurement")
    parser.add_argument(
        "--backlog-events",
        type=int,
        default=BACKLOG_EVENTS,
        help=f"events in the outbox the relay's backlog limit drains (default {BACKLOG_EVENTS})",
    )
    parser.add_argument("--rules-decisions", type=int, default=20_000, help="fraud decisions timed (default 20000)")
    parser.add_argument(
        "--rules-warm-attempts", type=int, default=200_000, help="attempts in the rules' statistics (default 200000)"
    )
    parser.add_argument(
        "--reconcile-sagas",
        type=int,
        default=100_000,
        help="finished purchases the nightly reconciliation is timed on (default 100000; 0: skip)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the mix and the picks")
    parser.add_argument("--work-dir", type=Path, help="certificates and cluster state (default: a temp dir, removed)")
    parser.add_argument(
        "--json", type=Path, help="where to write the JSON report (default .run/bench/bench-<time>.json)"
    )
    return parser.parse_args(argv)


def scenario(name: str, arguments: argparse.Namespace, earlier: Sequence[ScenarioResult]) -> Scenario:
    if name == "throughput":
        return Scenario(name, arguments.duration_s, arguments.warmup_s, concurrency=arguments.concurrency)
    capacity = next((result.sagas_per_s for result in earlier if result.scenario.name == "throughput"), 0.0)
    if name == "latency":
        # Half of what the cluster can take: the latency a user sees when it is not saturated.
        rate = arguments.rate or (round(capacity / 2) if capacity else LATENCY_RATE_DEFAULT)
        return Scenario(name, arguments.duration_s, arguments.warmup_s, rate_per_s=rate)
    # About twice what the cluster can take, so that the standard tier is saturated.
    rate = arguments.lanes_rate or (2 * capacity if capacity else LANES_RATE_DEFAULT)
    return Scenario(name, arguments.duration_s, arguments.warmup_s, rate_per_s=round(rate), lanes=True)


async def measure_limits(
    certs_dir: Path, work_dir: Path, duration_s: float, atomic_batch_min: int, backlog_events: int
) -> list[limits.RawLimit]:
    found = [await limits.echo_rpc(certs_dir, concurrency=ECHO_CONCURRENCY, duration_s=duration_s)]
    for in_flight in PUBLISH_IN_FLIGHT:
        found.append(
            await limits.jetstream_publish(
                certs_dir, work_dir / f"raw-{in_flight}", in_flight=in_flight, duration_s=duration_s
            )
        )
    # The skeleton publishes as the cluster's relays do; and, to show what atomic batches bring, without them.
    rules = {skeleton.NAME: atomic_batch_min} | ({skeleton.SINGLE_PUBLISHES_NAME: 0} if atomic_batch_min else {})
    for name, rule in rules.items():
        found.append(
            await skeleton.saga_messaging(
                certs_dir,
                work_dir / "raw-skeleton",
                in_flight=SKELETON_IN_FLIGHT,
                duration_s=duration_s,
                atomic_batch_min=rule,
                name=name,
            )
        )
    # Where atomic batches pay: the relay draining a backlog, with the run's rule and without.
    for rule in dict.fromkeys((atomic_batch_min, 0)):
        found.append(
            await backlog.relay_backlog(
                certs_dir, work_dir / f"raw-backlog-{rule}", events=backlog_events, atomic_batch_min=rule
            )
        )
    return found


async def drive(cluster: LocalCluster, arguments: argparse.Namespace) -> list[ScenarioResult]:
    clients = cluster.service_clients()
    observer = await TerminalObserver.connect(cluster.nats_url, cluster.tls_files("ops"))
    try:
        print("setting up wallets and items ...", file=sys.stderr, flush=True)
        fixtures = await create_fixtures(clients, wallets=arguments.wallets, empty_wallets=8, skus=arguments.skus)
        pids = {name: process.pid for name, process in cluster.processes.items()}
        pids["bench"] = os.getpid()
        results: list[ScenarioResult] = []
        for name in SCENARIOS if arguments.scenario == "all" else (arguments.scenario,):
            lanes = Lanes() if name == "lanes" else None
            generator = LoadGenerator(clients, observer, fixtures, arguments.mix, arguments.seed, lanes)
            results.append(await run_scenario(scenario(name, arguments, results), generator, observer, pids))
        return results
    finally:
        try:
            await observer.close()
        finally:
            await clients.close()


async def settle(cluster: LocalCluster) -> invariants.Report:
    """The invariants once every payment has ended (purchases the run gave up on may still be
    compensating), or as they stand after SETTLE_TIMEOUT_S."""
    deadline_s = time.monotonic() + SETTLE_TIMEOUT_S
    urls = [cluster.database_url(service) for service in ("ledger", "inventory", "payments")]
    while True:
        found = await invariants.check(*urls)
        if found.ok or time.monotonic() > deadline_s:
            return found
        await asyncio.sleep(SETTLE_POLL_S)


def run(arguments: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    # Each step on the services' kind of event loop (uvloop where installed): the load generator
    # shares their CPUs.
    certs_dir = work_dir / "certs"
    for _ in rotation.bootstrap(certs_dir, certs_dir):
        pass
    print("measuring the raw limits of this machine ...", file=sys.stderr, flush=True)
    raw = run_on_fast_loop(
        measure_limits(
            certs_dir, work_dir, arguments.limits_duration_s, arguments.atomic_batch_min, arguments.backlog_events
        )
    )
    print("measuring the fraud rules' decisions ...", file=sys.stderr, flush=True)
    decisions = rules.measure(arguments.rules_decisions, arguments.rules_warm_attempts)
    print("starting a fresh local cluster (SQLite) ...", file=sys.stderr, flush=True)
    relays = {"PAYSAGA_ATOMIC_BATCH_MIN": str(arguments.atomic_batch_min)}
    environment = {service: dict(relays) for service in ("payments", "inventory", "ledger")}
    environment["payments"]["PAYSAGA_VELOCITY_LIMIT"] = str(10**9)  # many purchases per wallet, on purpose
    with LocalCluster(work_dir / "cluster", certs_dir, ClusterPorts.free(), environment=environment) as cluster:
        results = run_on_fast_loop(drive(cluster, arguments))
        print("waiting for every purchase to end, then checking the invariants ...", file=sys.stderr, flush=True)
        found = run_on_fast_loop(settle(cluster))
        print("measuring the token endpoint and the per-call token checks ...", file=sys.stderr, flush=True)
        token_endpoint, checks = run_on_fast_loop(oauth.measure(cluster, work_dir, arguments.limits_duration_s))
    reconciliation = None
    if arguments.reconcile_sagas:
        print(f"timing the reconciliation of {arguments.reconcile_sagas} purchases ...", file=sys.stderr, flush=True)
        reconciliation = run_on_fast_loop(
            reconcile.measure(certs_dir, work_dir / "reconcile", arguments.reconcile_sagas, arguments.seed)
        )
    return report.build(
        machine.describe(REPO),
        raw,
        results,
        found,
        oauth=(token_endpoint, checks),
        rules=decisions,
        reconciliation=reconciliation,
    )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("nats", "asyncio"):  # reconnect chatter and TLS close warnings of the clients
        logging.getLogger(noisy).setLevel(logging.ERROR)
    work_dir = arguments.work_dir or Path(tempfile.mkdtemp(prefix="paysaga-bench-"))
    try:
        result = run(arguments, work_dir.resolve())
    finally:
        if arguments.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    destination = arguments.json or REPO / ".run" / "bench" / f"bench-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(result, indent=2) + "\n")
    print(report.table(result))
    print(f"\nJSON report: {destination}")
    return 0 if report.clean(result) else 1


if __name__ == "__main__":
    sys.exit(main())
