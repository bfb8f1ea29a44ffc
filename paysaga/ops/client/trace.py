"""``paysaga trace PAYMENT_ID``: one payment's saga across the services, from the event streams.

Every event of the saga (its ``saga_id`` is the payment id) in the payments, ledger and
inventory streams, in the order they happened: when, which service, which event, on which
lane, how long after the event before it and after the event that caused it, and what it says
(a reason, an amount). The streams are read from a little before the payment was created (as
GetPayment tells) to their end, with an ops certificate; nothing is changed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.protobuf import json_format
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import ServiceUnavailableError

from paysaga.core import eventing, html, lanes
from paysaga.core.eventing import EventEnvelope
from paysaga.runtime.messaging import streams
from paysaga.runtime.settings import TlsFiles

CONNECT_TIMEOUT_S = 10.0
FETCH_BATCH = 256
FETCH_TIMEOUT_S = 5.0
LEADER_POLL_S = 0.1
# Events are stamped by their producer's clock when written: start a little before the payment.
CLOCK_SLACK = dt.timedelta(seconds=5)
PRODUCERS = ("payments", "ledger", "inventory")


@dataclass(frozen=True)
class Step:
    at: dt.datetime
    producer: str
    event_type: str
    lane: str
    # Milliseconds since the step before, and since the event that caused it (None: no cause here).
    after_previous_ms: float
    after_cause_ms: float | None
    detail: str


async def saga_events(nats_url: str, files: TlsFiles, saga_id: str, since: dt.datetime) -> list[EventEnvelope]:
    """The saga's events in the three streams, stored from since on, oldest first."""
    client = await streams.connect(nats_url, files, name="paysaga-trace", timeout_s=CONNECT_TIMEOUT_S)
    try:
        found = [envelope async for envelope, _ in events_since(client, since) if envelope.saga_id == saga_id]
    finally:
        await client.close()
    return sorted(found, key=lambda envelope: envelope.occurred_at.ToNanoseconds())


async def events_since(client: NatsClient, since: dt.datetime) -> AsyncIterator[tuple[EventEnvelope, dt.datetime]]:
    """Every event of the three purchase streams stored from since on, with when JetStream stored
    it, stream by stream (read through a consumer of its own, without acknowledgements)."""
    jetstream = client.jetstream()
    for producer in PRODUCERS:
        stream = streams.owned_streams(producer)[0].name
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30,
        )
        subscription = await jetstream.pull_subscribe(
            f"{eventing.EVENTS_SUBJECT_ROOT}.{producer}.>", stream=stream, config=config
        )
        try:
            pending = (await subscription.consumer_info()).num_pending or 0
            while pending > 0:
                messages = await fetch_when_ready(subscription, min(pending, FETCH_BATCH))
                pending -= len(messages)
                for message in messages:
                    yield eventing.parse(message.data), message.metadata.timestamp
        finally:
            await subscription.unsubscribe()


async def fetch_when_ready(subscription: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
    """A fetch from a consumer just created: on a replicated stream it answers "unavailable"
    (503) until it has a leader, so that is tried again for up to FETCH_TIMEOUT_S."""
    deadline = time.monotonic() + FETCH_TIMEOUT_S
    while True:
        try:
            return await subscription.fetch(batch, timeout=FETCH_TIMEOUT_S)
        except ServiceUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(LEADER_POLL_S)


def steps(events: Sequence[EventEnvelope]) -> list[Step]:
    """The timeline: each event with the time since the one before and since its cause."""
    at_of = {envelope.event_id: envelope.occurred_at.ToDatetime(dt.UTC) for envelope in events}
    found: list[Step] = []
    previous: dt.datetime | None = None
    for envelope in events:
        at = at_of[envelope.event_id]
        cause = at_of.get(envelope.causation_id)
        found.append(
            Step(
                at,
                envelope.producer,
                envelope.event_type,
                lanes.lane_of(envelope.event_type, envelope.sla_tier),
                0.0 if previous is None else (at - previous).total_seconds() * 1000,
                None if cause is None else (at - cause).total_seconds() * 1000,
                _detail(envelope),
            )
        )
        previous = at
    return found


def _detail(envelope: EventEnvelope) -> str:
    """What the event says that a person looks for: a reason, an amount, a quantity."""
    payload = getattr(envelope, eventing.PAYLOAD_FIELDS[envelope.event_type])
    shown = json_format.MessageToDict(payload, preserving_proto_field_name=True)
    shown.pop("payment_id", None)
    parts = []
    if "reason" in shown:
        parts.append(f"reason: {shown.pop('reason')}")
    amount = shown.pop("amount", None)
    if amount:
        parts.append(f"{amount.get('amount_minor', 0)} {amount.get('currency', '')}")
    for key in ("sku", "quantity", "rule", "region"):
        if key in shown:
            parts.append(f"{key} {shown[key]}")
    return ", ".join(parts)


def as_text(payment_id: str, status: str, timeline: Sequence[Step]) -> str:
    if not timeline:
        return f"payment {payment_id} {status}: no events in the streams (expired, or not published yet)"
    start = timeline[0].at
    lines = [f"payment {payment_id} {status}: {len(timeline)} events from {start:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"]
    lines.append(f"  {'at':>9}  {'step':>9}  {'cause':>9}  {'service':<9}  {'event':<28} {'lane':<12} detail")
    for step in timeline:
        since_start = (step.at - start).total_seconds() * 1000
        cause = "" if step.after_cause_ms is None else f"+{step.after_cause_ms:.0f} ms"
        lines.append(
            f"  {since_start:>6.0f} ms  {'+' + format(step.after_previous_ms, '.0f') + ' ms':>9}  {cause:>9}  "
            f"{step.producer:<9}  {step.event_type:<28} {step.lane:<12} {step.detail}".rstrip()
        )
    return "\n".join(lines)


def as_json(payment_id: str, status: str, timeline: Sequence[Step]) -> str:
    return json.dumps(
        {
            "payment_id": payment_id,
            "status": status,
            "events": [
                {
                    "at": step.at.isoformat(),
                    "producer": step.producer,
                    "event_type": step.event_type,
                    "lane": step.lane,
                    "after_previous_ms": round(step.after_previous_ms, 3),
                    "after_cause_ms": None if step.after_cause_ms is None else round(step.after_cause_ms, 3),
                    "detail": step.detail,
                }
                for step in timeline
            ],
        }
    )


TIMELINE_WIDTH_PX = 960
TIMELINE_LEFT_PX = 90
TIMELINE_ROW_PX = 110


def as_html(payment_id: str, status: str, timeline: Sequence[Step]) -> str:
    """A page with the steps' table and a timeline: one row per service, a dot per event at its time."""
    heading = f"<h1>payment <code>{html.escape(payment_id)}</code> {html.escape(status)}</h1>"
    if not timeline:
        body = f"{heading}\n<p>No events in the streams (expired, or not published yet).</p>"
        return html.page(f"paysaga trace {payment_id}", body)
    start = timeline[0].at
    summary = f"<p>{len(timeline)} events from {html.escape(start.isoformat())}</p>"
    body = "\n".join((heading, summary, "<h2>Timeline</h2>", _timeline_svg(timeline), "<h2>Steps</h2>"))
    return html.page(f"paysaga trace {payment_id}", body + "\n" + _steps_table(timeline))


def _steps_table(timeline: Sequence[Step]) -> str:
    start = timeline[0].at
    head = "".join(
        f"<th{' class=number' if index < 3 else ''}>{name}</th>"
        for index, name in enumerate(("at", "step", "cause", "service", "event", "lane", "detail"))
    )
    rows = []
    for step in timeline:
        cause = "" if step.after_cause_ms is None else f"+{step.after_cause_ms:.0f} ms"
        rows.append(
            f'<tr data-producer="{html.escape(step.producer)}">'
            f'<td class="number">{(step.at - start).total_seconds() * 1000:.0f} ms</td>'
            f'<td class="number">+{step.after_previous_ms:.0f} ms</td><td class="number">{cause}</td>'
            f"<td>{html.escape(step.producer)}</td><td>{html.escape(step.event_type)}</td>"
            f"<td>{html.escape(step.lane)}</td><td>{html.escape(step.detail)}</td></tr>"
        )
    return f'<table id="steps"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _timeline_svg(timeline: Sequence[Step]) -> str:
    start = timeline[0].at
    # The three services always, in the saga's order; any other producer after them.
    producers = [*PRODUCERS, *sorted({step.producer for step in timeline} - set(PRODUCERS))]
    last_ms = (timeline[-1].at - start).total_seconds() * 1000
    span_ms = max(last_ms, 1.0)  # one event, or several in the same millisecond: all at the left
    plot_px = TIMELINE_WIDTH_PX - TIMELINE_LEFT_PX - 200  # room for the last event's label
    height_px = len(producers) * TIMELINE_ROW_PX + 30
    shapes = []
    for index, producer in enumerate(producers):
        y = (index + 1) * TIMELINE_ROW_PX
        shapes.append(
            f'<text x="0" y="{y + 4}" font-weight="600">{html.escape(producer)}</text>'
            f'<line class="grid" x1="{TIMELINE_LEFT_PX}" x2="{TIMELINE_LEFT_PX + plot_px}" y1="{y}" y2="{y}"/>'
        )
    for step in timeline:
        since_ms = (step.at - start).total_seconds() * 1000
        x = TIMELINE_LEFT_PX + plot_px * since_ms / span_ms
        y = (producers.index(step.producer) + 1) * TIMELINE_ROW_PX
        cause = "" if step.after_cause_ms is None else f", +{step.after_cause_ms:.0f} ms after its cause"
        tip = f"{step.event_type} at +{since_ms:.0f} ms ({step.lane}{cause}) {step.detail}".rstrip()
        # Labels slant up and right, so events close in time stay readable.
        shapes.append(
            f'<circle cx="{x:.1f}" cy="{y}" r="6" fill="#0969da" data-producer="{html.escape(step.producer)}" '
            f'data-event="{html.escape(step.event_type)}" data-ms="{since_ms:.0f}">'
            f"<title>{html.escape(tip)}</title></circle>"
            f'<text x="{x + 4:.1f}" y="{y - 12}" transform="rotate(-30 {x + 4:.1f} {y - 12})">'
            f"{html.escape(step.event_type)}</text>"
        )
    base = len(producers) * TIMELINE_ROW_PX + 20
    shapes.append(
        f'<text x="{TIMELINE_LEFT_PX}" y="{base}">0 ms</text>'
        f'<text x="{TIMELINE_LEFT_PX + plot_px}" y="{base}" text-anchor="end">+{last_ms:.0f} ms</text>'
    )
    return (
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="the events over time" '
        f'width="{TIMELINE_WIDTH_PX}" height="{height_px}" viewBox="0 0 {TIMELINE_WIDTH_PX} {height_px}">'
        f"{''.join(shapes)}</svg>"
    )
