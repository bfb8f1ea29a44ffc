"""One chaos run, from inside the client's network namespace: the cluster (three nats-servers,
the services, each process in a namespace of its own), a mixed load of purchases with cancels and
refunds, and a seeded schedule of faults while it runs. Then the verdict: every payment terminal
within 30 s of the last fault, money and stock conserved exactly, no duplicate effect (the
nightly reconciliation reports nothing), no dead letter.

The seed fixes the load (who buys what, which are cancelled or refunded) and the faults (which,
on whom, when, for how long); the operating system's timing still varies from run to run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import sqlalchemy as sa
from nats.js.errors import ServiceUnavailableError
from sqlalchemy.ext.asyncio import create_async_engine

from paysaga.ledger.v1 import ledger_pb2
from paysaga.ops.cluster.localcluster import AUTHORIZATION_SERVER, SERVICES, ClusterPorts, LocalCluster
from paysaga.ops.pki import authority, rotation
from paysaga.ops.pki.authority import Kind
from paysaga.payments.v1 import payments_pb2
from tests.chaos.network import Network
from tests.e2e.shop import TERMINAL, Purchase, Shop

T = TypeVar("T")
PRICE = 1250
NATS_NODES = ("nats", "nats-2", "nats-3")
# Who a fault may strike: the saga's services and the NATS nodes.
TARGETS = {
    "kill": SERVICES,
    "stall": SERVICES,
    "kill-nats": NATS_NODES,
    "partition": (*SERVICES, *NATS_NODES),
}
TERMINAL_WITHIN_S = 30.0
QUIET_WITHIN_S = 60.0
TERMINAL_NAMES = {"COMPLETED", "FAILED", "CANCELLED", "REJECTED", "REFUNDED"}
CALL_TIMEOUT_S = 5.0
# A client retries a call that found the cluster unavailable, with the same idempotency key.
RETRY_FOR_S = 90.0
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
WORKERS = 8
SETTINGS = {
    "payments": {
        "PAYSAGA_VELOCITY_LIMIT": "1000000",
        "PAYSAGA_MAX_IN_FLIGHT": "100000",
    }
}


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str
    start_s: float  # after the load began
    duration_s: float


@dataclass
class Outcome:
    seed: int
    purchases: int
    faults: list[Fault]
    statuses: dict[str, int] = field(default_factory=dict)
    last_fault_end_s: float = 0.0
    terminal_after_last_fault_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def describe(self) -> str:
        lines = [
            f"chaos seed {self.seed}: {self.purchases} purchases, {len(self.faults)} faults in {self.elapsed_s:.0f} s",
            *(
                f"  {fault.start_s:6.1f} s  {fault.kind:<10} {fault.target:<10} for {fault.duration_s:.1f} s"
                for fault in self.faults
            ),
            "  outcomes: " + ", ".join(f"{status} {count}" for status, count in sorted(self.statuses.items())),
            f"  every payment terminal {self.terminal_after_last_fault_s:.1f} s after the last fault ended",
        ]
        lines += [f"  PROBLEM: {problem}" for problem in self.problems] or ["  verdict: nothing lost, nothing doubled"]
        return "\n".join(lines)


def schedule(rng: random.Random, count: int, span_s: float) -> list[Fault]:
    """count (at least 3) faults spread over span_s, one at a time; whatever the draw, at least
    one NATS node lost and one NATS node cut off by a partition."""
    count = max(count, 3)
    kinds = ["kill-nats", "partition", "partition"] + [rng.choice(list(TARGETS)) for _ in range(max(0, count - 3))]
    rng.shuffle(kinds)
    slot_s = span_s / max(1, count)
    faults = []
    for index, kind in enumerate(kinds[:count]):
        targets = TARGETS[kind]
        if kind == "partition" and index == kinds.index("partition"):
            targets = NATS_NODES  # the first partition cuts off a NATS node, the others anything
        faults.append(
            Fault(kind, rng.choice(targets), index * slot_s + rng.uniform(0, slot_s * 0.3), rng.uniform(1.0, 6.0))
        )
    return faults


async def strike(cluster: LocalCluster, network: Network, fault: Fault) -> None:
    """Apply one fault for its duration, then undo it (a killed process is started again)."""
    if fault.kind == "kill":
        cluster.kill(fault.target)
        await asyncio.sleep(fault.duration_s)
        cluster.start_service(fault.target)
    elif fault.kind == "stall":
        process = cluster.processes[fault.target]
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(fault.duration_s)
        finally:
            process.send_signal(signal.SIGCONT)
    elif fault.kind == "kill-nats":
        cluster.kill(fault.target)
        await asyncio.sleep(fault.duration_s)
        await asyncio.to_thread(cluster.start_nats, fault.target)
    else:
        network.cut(fault.target)
        try:
            await asyncio.sleep(fault.duration_s)
        finally:
            network.heal(fault.target)


async def patiently(call: Callable[[], Awaitable[T]]) -> T:
    """A call retried, as a careful client does, while the cluster is unavailable."""
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in RETRIED or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


class Load:
    """Purchases of every kind, with cancels and refunds, from WORKERS concurrent clients."""

    def __init__(self, shop: Shop, rng: random.Random, count: int) -> None:
        self.shop, self.rng, self.count = shop, rng, count
        self.payments: list[str] = []
        self.refunded: set[str] = set()
        self.issued = 0
        # The load goes on past count until the last fault is over: every fault strikes under load.
        self.faults_over = asyncio.Event()

    async def prepare(self) -> None:
        shop = self.shop
        self.stocked = await shop.add_item(stock=self.count * 2)
        self.sold_out = await shop.add_item(stock=0)
        self.payers = [
            await shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, funds_minor=PRICE * self.count) for _ in range(4)
        ]
        self.poor = await shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, funds_minor=0)
        self.merchant = await shop.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT)
        # Drawn in order from a generator of its own, so the seed alone says who buys what.
        self.plan = random.Random(self.rng.random())

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(WORKERS)))

    async def _worker(self) -> None:
        while self.issued < self.count or not self.faults_over.is_set():
            kind, payer, follow_up = self.plan.random(), self.plan.choice(self.payers), self.plan.random()
            self.issued += 1
            purchase = Purchase(payer, self.merchant, self.stocked)
            if kind < 0.08:
                purchase = Purchase(self.poor, self.merchant, self.stocked)  # fails: no funds
            elif kind < 0.16:
                purchase = Purchase(payer, self.merchant, self.sold_out)  # fails: no stock
            payment = await patiently(
                functools.partial(self.shop.pay, purchase, amount_minor=PRICE, key=str(uuid.uuid4()))
            )
            self.payments.append(payment.payment_id)
            if follow_up < 0.08:
                await self._settle_then(payment.payment_id, self._cancel)
            elif follow_up < 0.16:
                await self._settle_then(payment.payment_id, self._refund)

    async def _settle_then(self, payment_id: str, action: Callable[[str], Awaitable[None]]) -> None:
        try:
            await action(payment_id)
        except grpc.aio.AioRpcError as error:
            # Too late to cancel, or not (yet) completed to refund: a business answer, not a fault.
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise

    async def _cancel(self, payment_id: str) -> None:
        request = payments_pb2.CancelPaymentRequest(payment_id=payment_id, reason="chaos: changed my mind")
        await patiently(lambda: self.shop.payments.CancelPayment(request, timeout=CALL_TIMEOUT_S))

    async def _refund(self, payment_id: str) -> None:
        # Patiently too: a payments process stalled or cut off answers nothing until the call's deadline.
        await patiently(lambda: self.shop.wait_for(payment_id, TERMINAL, timeout_s=RETRY_FOR_S))
        request = payments_pb2.RefundPaymentRequest(payment_id=payment_id, reason="chaos: returned")
        await patiently(lambda: self.shop.payments.RefundPayment(request, timeout=CALL_TIMEOUT_S))
        self.refunded.add(payment_id)


async def verdict(shop: Shop, load: Load, outcome: Outcome, last_fault_end: float) -> None:
    """Every payment terminal in time, then the books: conserved, nothing doubled, no dead letter."""
    deadline = last_fault_end + TERMINAL_WITHIN_S
    while True:
        statuses = await payment_statuses(shop.cluster)
        unfinished = [payment_id for payment_id in load.payments if statuses.get(payment_id) not in TERMINAL_NAMES]
        if not unfinished or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    outcome.terminal_after_last_fault_s = max(0.0, time.monotonic() - last_fault_end)
    if unfinished:
        outcome.problems.append(
            f"{len(unfinished)} payments not terminal {TERMINAL_WITHIN_S:g} s after the last fault, e.g. "
            + ", ".join(f"{payment_id} {statuses.get(payment_id, 'missing')}" for payment_id in unfinished[:5])
        )
    for payment_id in load.payments:
        status = statuses.get(payment_id, "missing")
        outcome.statuses[status] = outcome.statuses.get(status, 0) + 1
    quiet_by = time.monotonic() + QUIET_WITHIN_S
    while not await quiet(shop):
        if time.monotonic() > quiet_by:
            outcome.problems.append(f"events still unpublished or unhandled {QUIET_WITHIN_S:g} s after the end")
            break
        await asyncio.sleep(0.5)
    report = await shop.invariants()
    outcome.problems += [f"invariant: {violation}" for violation in report.violations]
    dead = await shop.dead_letters()
    if dead:
        outcome.problems.append(f"dead letters: {dead}")


async def quiet(shop: Shop) -> bool:
    """Nothing left to publish or to deliver. A NATS cluster still electing its leaders after the
    last fault answers "unavailable" (503): not known to be quiet yet, so asked again."""
    try:
        return not (await shop.unpublished_events() or await shop.busy_consumers())
    except ServiceUnavailableError:
        return False


async def payment_statuses(cluster: LocalCluster) -> dict[str, str]:
    """Every payment's status, read from the payments database (ten thousand calls would take longer)."""
    engine = create_async_engine(cluster.database_url("payments"))
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(sa.text("SELECT payment_id, status FROM payments"))
            return {str(payment_id): str(status) for payment_id, status in rows}
    finally:
        await engine.dispose()


def reconcile(cluster: LocalCluster, outcome: Outcome) -> None:
    result = subprocess.run(
        cluster.reconcile_command("--until", "now", "--no-publish", "--settle-s", "0"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        outcome.problems.append(f"the reconciliation found mismatches:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")


def issue_certificates(certs_dir: Path, network: Network) -> None:
    """The CA script's certificates, each service's and the NATS nodes' with the addresses they
    are reached at in their namespaces."""
    rotation.bootstrap(certs_dir, certs_dir)
    rotation.write_ops_token(certs_dir, certs_dir, "ops")
    ca = authority.load_ca(certs_dir)
    for service in (*SERVICES, AUTHORIZATION_SERVER):
        authority.issue(ca, certs_dir, service, Kind.SERVICE, ip_addresses=[network.members[service]], force=True)
    nodes = [network.members[node] for node in NATS_NODES]
    authority.issue(ca, certs_dir, "nats", Kind.SERVICE, ip_addresses=nodes, force=True)


async def chaos(work_dir: Path, network: Network, seed: int, purchases: int, fault_count: int) -> Outcome:
    rng = random.Random(seed)
    certs_dir = work_dir / "certs"
    issue_certificates(certs_dir, network)
    # A fault every few seconds: the load's expected length, from a rate measured on our machines.
    span_s = max(20.0, purchases / 40)
    outcome = Outcome(seed, purchases, schedule(rng, fault_count, span_s))
    started = time.monotonic()
    with LocalCluster(
        work_dir / "state",
        certs_dir,
        ClusterPorts.free(),
        environment=SETTINGS,
        nats_nodes=len(NATS_NODES),
        hosts=network.members,
        launcher=network.run_in,
    ) as cluster:
        shop = Shop(cluster)
        try:
            load = Load(shop, rng, purchases)
            await load.prepare()
            began = time.monotonic()

            async def faults() -> float:
                try:
                    for fault in outcome.faults:
                        await asyncio.sleep(max(0.0, began + fault.start_s - time.monotonic()))
                        print(f"chaos | {time.monotonic() - began:6.1f} s {fault.kind} {fault.target}", flush=True)
                        await strike(cluster, network, fault)
                    return time.monotonic()
                finally:
                    load.faults_over.set()

            _, last_fault_end = await asyncio.gather(load.run(), faults())
            outcome.last_fault_end_s = last_fault_end - began
            outcome.purchases = len(load.payments)
            await verdict(shop, load, outcome, last_fault_end)
        finally:
            await shop.close()
        reconcile(cluster, outcome)
    outcome.elapsed_s = time.monotonic() - started
    return outcome


def main(argv: list[str]) -> int:
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # TLS connections cut by the faults
    arguments = json.loads(argv[0])
    network = Network(arguments["prefix"], arguments["subnet"], dict(arguments["members"]))
    outcome = asyncio.run(
        chaos(Path(arguments["work_dir"]), network, arguments["seed"], arguments["purchases"], arguments["faults"])
    )
    print(outcome.describe(), flush=True)
    Path(arguments["work_dir"], "outcome.json").write_text(json.dumps(dataclasses.asdict(outcome), indent=2))
    return 1 if outcome.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
