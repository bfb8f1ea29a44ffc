"""Telling the cluster what a run found: one ReconciliationMismatchFound per mismatch, then
ReconciliationCompleted, on the reconciliation's own stream (RECONCILE_EVENTS), published as
the reconciliation's identity (spiffe://paysaga/reconcile), which may publish nothing else.

Each event's Nats-Msg-Id derives from the run and the mismatch, so a rerun of the same window
within the stream's duplicate window does not announce the same mismatch twice.
"""

from __future__ import annotations

import asyncio

from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient

from paysaga.core import eventing
from paysaga.events.v1 import events_pb2
from paysaga.runtime.messaging import streams
from services.reconcile.report import Report

PRODUCER = "reconcile"
PUBLISH_TIMEOUT_S = 10.0
# Publishes awaited together: enough to keep the server busy, few enough to bound memory.
PUBLISHES_IN_FLIGHT = 256


def completed(report: Report, report_sha256: str) -> events_pb2.ReconciliationCompleted:
    window = report.window
    event = events_pb2.ReconciliationCompleted(
        run_id=report.run_id,
        verdict=report.verdict.value,
        payments_checked=0 if report.counts is None else report.counts.sagas,
        mismatches=len(report.mismatches),
        incomplete_reasons=list(report.incomplete),
        report_sha256=report_sha256,
    )
    event.mismatches_by_kind.update(report.by_kind())
    event.window_start.FromDatetime(window.start)
    event.window_end.FromDatetime(window.end)
    event.lookback_start.FromDatetime(window.lookback_start)
    return event


async def publish(client: NatsClient, report: Report, report_sha256: str, replicas: int) -> int:
    """Announce the run; returns how many events were published."""
    jetstream = client.jetstream()
    await streams.ensure_stream(jetstream, streams.owned_streams(PRODUCER)[0], replicas)
    outgoing: list[tuple[str, Message, str]] = []
    for mismatch in report.mismatches:
        found = events_pb2.ReconciliationMismatchFound(
            run_id=report.run_id,
            mismatch_id=mismatch.mismatch_id,
            kind=mismatch.kind.value,
            mismatch_class=mismatch.info.mismatch_class.value,
            priority=mismatch.info.priority,
            payment_id=mismatch.payment_id,
            source=mismatch.source,
            detail=mismatch.detail,
        )
        found.at.FromDatetime(mismatch.at)
        outgoing.append((mismatch.payment_id or report.run_id, found, f"{report.run_id}:{mismatch.mismatch_id}"))

    async def send(saga_id: str, payload: Message, message_id: str) -> None:
        envelope = eventing.new_event(producer=PRODUCER, saga_id=saga_id, payload=payload, causation_id=report.run_id)
        await jetstream.publish(
            eventing.subject_of(envelope),
            envelope.SerializeToString(),
            headers={"Nats-Msg-Id": message_id},
            timeout=PUBLISH_TIMEOUT_S,
        )

    for start in range(0, len(outgoing), PUBLISHES_IN_FLIGHT):
        await asyncio.gather(*(send(*item) for item in outgoing[start : start + PUBLISHES_IN_FLIGHT]))
    # Last, once every mismatch is stored: whoever sees the run completed can read all it found.
    # A rerun of the window over changed data is announced again (its report differs).
    await send(report.run_id, completed(report, report_sha256), f"{report.run_id}:completed:{report_sha256[:16]}")
    return len(outgoing) + 1
