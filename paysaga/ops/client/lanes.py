"""``paysaga lanes``: every lane consumer's backlog, as JetStream holds it, for a person.

The same figures the services export as metrics (paysaga_consumer_pending, _ack_pending,
_redelivered and _oldest_age_seconds), read straight from NATS with an ops certificate (ops may
read JetStream's consumer and stream state; nothing is changed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from nats.js.errors import NotFoundError

from paysaga.ops.cluster.natsconf import CONSUMES
from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.lanes import LaneStatus, read_lane_status
from paysaga.runtime.settings import TlsFiles

CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LaneRow:
    service: str
    producer: str
    status: LaneStatus | None  # None: the consumer does not exist (yet)


async def read_lanes(nats_url: str, files: TlsFiles) -> list[LaneRow]:
    client = await streams.connect(nats_url, files, name="paysaga-lanes", timeout_s=CONNECT_TIMEOUT_S)
    try:
        jetstream = client.jetstream()
        rows = []
        for service, subscriptions in CONSUMES.items():
            for subscription in subscriptions:
                durable = subscription.durable_name(service)
                try:
                    status = await read_lane_status(jetstream, subscription.stream, durable, subscription.lane)
                except NotFoundError:
                    status = None
                rows.append(LaneRow(service, subscription.producer, status))
        return rows
    finally:
        await client.close()


def as_text(rows: Sequence[LaneRow]) -> str:
    header = (
        f"{'service':<10} {'from':<10} {'lane':<13} {'pending':>8} {'unacked':>8} {'redelivered':>11} {'oldest':>9}"
    )
    lines = [header]
    for row in rows:
        start = f"{row.service:<10} {row.producer:<10} "
        if row.status is None:
            lines.append(start + "(no consumer yet: the service has not started)")
            continue
        status = row.status
        lines.append(
            start + f"{status.lane:<13} {status.pending:>8} {status.ack_pending:>8} {status.redelivered:>11} "
            f"{status.oldest_age_s:>7.1f} s"
        )
    return "\n".join(lines)


def as_json(rows: Sequence[LaneRow]) -> str:
    return json.dumps(
        [
            {"service": row.service, "producer": row.producer, **(asdict(row.status) if row.status else {})}
            for row in rows
        ]
    )
