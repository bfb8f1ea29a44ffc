"""Following the payments stream into the rolling statistics and the spike detector.

Each payments process reads the stream through an ordered consumer of its own (ephemeral, no
acknowledgements; nats-py recreates it from the next sequence after a gap or a reconnect),
starting 24 h back, so a process that starts knows the same last day as those running; until it
has read up to the present, the rules see ``stats.ready`` false. Only PaymentRequested and
PaymentRejected are decoded; the other events are skipped by subject.

A spike is announced as a TrafficSpikeDetected event through the outbox, with an alert line. Its
event_id is derived from the key and the bucket, so the same spike seen by every replica is stored
once (JetStream drops a repeated Nats-Msg-Id within the stream's duplicate window); a spike found
only while reading old events at start is taken in (rules see it as active) but not announced
again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid

import nats.errors
import sqlalchemy as sa
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from paysaga.core.eventing import EVENTS_SUBJECT_ROOT, EventEnvelope, new_event
from paysaga.events.v1 import events_pb2
from paysaga.runtime import metrics
from paysaga.runtime.messaging.streams import owned_streams
from paysaga.runtime.messaging.windows import DUPLICATE_WINDOW_S
from paysaga.runtime.storage.unit_of_work import Database
from services.payments.adapters.repository import PaymentsUnit
from services.payments.rules.spikes import Spike, SpikeDetector
from services.payments.rules.stats import HISTORY_S, TrafficStats

log = logging.getLogger(__name__)

SERVICE = "payments"
FOLLOWED = frozenset({"PaymentRequested", "PaymentRejected"})
_SPIKE_NAMESPACE = uuid.UUID("6b1d1c4e-5b0a-4f43-9a3e-2f4d0c1e7a55")
# A spike older than this when found is not announced: another replica announced it, or the
# duplicate window that would drop a second announcement has passed.
ANNOUNCE_WITHIN_S = DUPLICATE_WINDOW_S / 2
NEXT_TIMEOUT_S = 1.0


def spike_event(spike: Spike) -> EventEnvelope:
    """The TrafficSpikeDetected event of a spike, with the event_id every replica gives it."""
    spike_id = str(uuid.uuid5(_SPIKE_NAMESPACE, f"{spike.kind}/{spike.key}/{spike.bucket_s:g}/{spike.bucket}"))
    payload = events_pb2.TrafficSpikeDetected(
        kind=spike.kind,
        key=spike.key,
        bucket_s=spike.bucket_s,
        count=spike.count,
        baseline_mean=spike.baseline_mean,
        baseline_stddev=spike.baseline_stddev,
        baseline_buckets=spike.baseline_buckets,
        z=spike.z,
    )
    payload.bucket_start.FromDatetime(dt.datetime.fromtimestamp(spike.bucket_start_s, dt.UTC))
    envelope = new_event(producer=SERVICE, saga_id=spike_id, payload=payload)
    envelope.event_id = spike_id
    return envelope


class TrafficFollower:
    def __init__(self, stats: TrafficStats, detector: SpikeDetector, database: Database[PaymentsUnit]) -> None:
        self.stats = stats
        self.detector = detector
        self.database = database
        self._next_sequence: int | None = None  # in the stream, once something was read

    def take(self, message_subject: str, data: bytes) -> None:
        """One message of the stream into the statistics (and the detector)."""
        event_type = message_subject.rpartition(".")[2]
        if event_type not in FOLLOWED:
            return
        envelope = EventEnvelope.FromString(data)
        time_s = envelope.occurred_at.ToDatetime(dt.UTC).timestamp()
        if envelope.HasField("payment_requested"):
            event = envelope.payment_requested
            accepted = not envelope.payment_requested.under_review
        else:
            event = envelope.payment_rejected  # type: ignore[assignment]
            accepted = False
        keys = {"merchant": event.merchant_account_id, "region": event.region}
        counts = self.stats.add(
            time_s, event.payer_account_id, keys["merchant"], keys["region"], event.amount.amount_minor, accepted
        )
        self.detector.observe(time_s, counts, keys)

    async def announce(self) -> None:
        """Announce the spikes found since last time, but those that are old news. One the
        database cannot take now is tried again with the next."""
        found, self.detector.found = self.detector.found, []
        now_s = self.database.clock().timestamp()
        spikes = [spike for spike in found if now_s - (spike.bucket_start_s + spike.bucket_s) < ANNOUNCE_WITHIN_S]
        for index, spike in enumerate(spikes):
            try:
                async with self.database.transaction() as unit:
                    unit.emit_envelope(spike_event(spike))
            except sa.exc.IntegrityError:
                # Replicas sharing a database: another one wrote the same event (the same id) first.
                log.info("traffic.spike_announced_elsewhere", extra={"kind": spike.kind, "key": spike.key})
                continue
            except Exception as error:  # noqa: BLE001 - the database is away: the next round tries again
                log.warning("traffic.spike_not_announced_yet", extra={"error": repr(error)})
                self.detector.found[:0] = spikes[index:]
                return
            metrics.TRAFFIC_SPIKES.labels(spike.kind).inc()
            log.warning(
                "traffic.spike_detected",
                extra={
                    "alert": True,
                    "kind": spike.kind,
                    "key": spike.key,
                    "count": spike.count,
                    "baseline_mean": round(spike.baseline_mean, 2),
                    "z": round(spike.z, 2),
                },
            )

    def _caught_up(self) -> None:
        if not self.stats.ready:
            self.stats.ready = True
            log.info("traffic.caught_up", extra={"attempts": self.stats.events})

    async def run(self, jetstream: JetStreamContext, stop: asyncio.Event) -> None:
        """Read the last 24 h, then every new attempt, until stop. After a failure it goes on from
        the next message it had not read (nothing is counted twice or missed)."""
        if self._next_sequence is None:
            start = self.database.clock() - dt.timedelta(seconds=HISTORY_S)
            self.stats.clear(start.timestamp())
            self.detector.clear()
            policy, config = DeliverPolicy.BY_START_TIME, ConsumerConfig(opt_start_time=start)
        else:
            policy, config = DeliverPolicy.BY_START_SEQUENCE, ConsumerConfig(opt_start_seq=self._next_sequence)
        subscription = await jetstream.subscribe(
            f"{EVENTS_SUBJECT_ROOT}.{SERVICE}.>",
            stream=owned_streams(SERVICE)[0].name,
            ordered_consumer=True,
            deliver_policy=policy,
            config=config,
        )
        try:
            while not stop.is_set():
                try:
                    message = await subscription.next_msg(timeout=NEXT_TIMEOUT_S)
                except nats.errors.TimeoutError:
                    self._caught_up()  # nothing more to read
                    await self.announce()
                    continue
                self._next_sequence = message.metadata.sequence.stream + 1
                self.take(message.subject, message.data)
                if not message.metadata.num_pending:
                    self._caught_up()
                if self.detector.found:
                    await self.announce()
        finally:
            await subscription.unsubscribe()
