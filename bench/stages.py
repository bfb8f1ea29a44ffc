"""Where a completed saga's time goes, stage by stage: from the CreatePayment call to each event
of the happy path as JetStream stored it (create → PaymentRequested → FundsHeld → StockReserved
→ FundsCaptured → PaymentCompleted). A stage is one hop: a consumer fetching the event before it,
its handler's transaction, the relay publishing what it emitted. A regression shows in its stage.

The events are read back from the three streams after a scenario (the run's sagas only), by the
time JetStream stored each; the create time is the load generator's, on the same machine's clock.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nats.aio.client import Client as NatsClient

from bench.stats import percentile
from paysaga.ops.client.trace import events_since

HAPPY_PATH = ("PaymentRequested", "FundsHeld", "StockReserved", "FundsCaptured", "PaymentCompleted")


@dataclass(frozen=True)
class Stage:
    name: str
    sagas: int
    p50_ms: float
    p99_ms: float

    def as_json(self) -> dict[str, object]:
        return {
            "stage": self.name,
            "sagas": self.sagas,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
        }


async def stored_times(client: NatsClient, since: dt.datetime, wanted: set[str]) -> dict[str, dict[str, float]]:
    """For each wanted saga, when each event of its happy path was stored (Unix seconds)."""
    times: dict[str, dict[str, float]] = {}
    async for envelope, stored in events_since(client, since):
        if envelope.saga_id in wanted and envelope.event_type in HAPPY_PATH:
            times.setdefault(envelope.saga_id, {})[envelope.event_type] = stored.timestamp()
    return times


def stages(created_at: Mapping[str, float], times: Mapping[str, Mapping[str, float]]) -> list[Stage]:
    """Each hop's p50 and p99 over the sagas that went the whole happy path, then the whole."""
    names = [f"create → {HAPPY_PATH[0]}"] + [f"{a} → {b}" for a, b in itertools.pairwise(HAPPY_PATH)]
    hops: list[list[float]] = [[] for _ in names]
    totals: list[float] = []
    for saga_id, created in created_at.items():
        seen = times.get(saga_id, {})
        if not all(event in seen for event in HAPPY_PATH):
            continue
        moments = [created, *(seen[event] for event in HAPPY_PATH)]
        for index, (before, after) in enumerate(itertools.pairwise(moments)):
            hops[index].append(max(0.0, after - before))
        totals.append(max(0.0, moments[-1] - created))
    rows = [_stage(name, values) for name, values in zip(names, hops, strict=True)]
    return [*rows, _stage("create → PaymentCompleted", totals)]


def _stage(name: str, values_s: Sequence[float]) -> Stage:
    ordered = sorted(values_s)
    return Stage(name, len(ordered), percentile(ordered, 0.50) * 1000, percentile(ordered, 0.99) * 1000)
