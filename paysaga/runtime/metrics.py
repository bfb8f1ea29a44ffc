"""Prometheus metrics of a service process, served at ``https://<PAYSAGA_METRICS_BIND>/metrics``.

The endpoint takes mutual TLS like every port of ours: a scraper presents a certificate from our
CA (Prometheus: ``scheme: https`` and ``tls_config`` with ``ca_file``, ``cert_file``,
``key_file``). Besides prometheus-client's own process metrics (CPU seconds, resident memory,
open files), every service has:

- ``paysaga_events_handled_total{producer, event_type, outcome}`` and
  ``paysaga_event_handling_seconds{producer, event_type}``: what its consumers did with the
  events they were given (outcome ``applied``, ``retry`` when it is tried again later, ``failed``);
- ``paysaga_dead_letters_total{producer, event_type}``: events parked after their retries;
- ``paysaga_consumer_pending{consumer, lane}``, ``paysaga_consumer_ack_pending{consumer, lane}``,
  ``paysaga_consumer_redelivered{consumer, lane}`` and
  ``paysaga_consumer_oldest_age_seconds{consumer, lane}``: each lane consumer's backlog as
  JetStream reports it, and how long its oldest event has waited (read every few seconds);
- ``paysaga_lane_wait_seconds{lane}``: how long each event waited, from its storage in the stream
  to its handling (a turn) starting: the queueing a lane's events meet;
- ``paysaga_events_published_total{event_type}`` and ``paysaga_relay_lag_seconds``: the outbox
  relay's work, and the time from an event's commit to JetStream's acknowledgement.

payments adds ``paysaga_sagas_ended_total{outcome, tier}`` (a payment reaching COMPLETED, FAILED,
CANCELLED, REJECTED or REFUNDED), ``paysaga_admission_refusals_total{tier}``, and for its fraud
rules ``paysaga_decisions_total{action}``, ``paysaga_decision_seconds`` (gathering the inputs and
evaluating every rule), ``paysaga_rule_hits_total{rule, mode}`` (mode ``shadow`` counts what a
shadow rule would have done), ``paysaga_rule_errors_total{rule}``, ``paysaga_rules_reloads_total
{outcome}`` (``loaded`` or ``refused``) and ``paysaga_traffic_spikes_total{kind}``.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from nats.js import JetStreamContext
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from paysaga.runtime.https import serve_https
from paysaga.runtime.messaging.lanes import read_lane_status
from paysaga.runtime.settings import TlsFiles
from paysaga.runtime.tasks import sleep_or_stop

log = logging.getLogger(__name__)

CONSUMER_POLL_INTERVAL_S = 5.0
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

EVENTS_HANDLED = Counter(
    "paysaga_events_handled", "Events given to this service's handlers", ["producer", "event_type", "outcome"]
)
EVENT_HANDLING_SECONDS = Histogram(
    "paysaga_event_handling_seconds",
    "Time to apply one event (alone) or its share of a batch",
    ["producer", "event_type"],
    buckets=_LATENCY_BUCKETS,
)
DEAD_LETTERS = Counter("paysaga_dead_letters", "Events parked in the dead-letter stream", ["producer", "event_type"])
_CONSUMER = ["consumer", "lane"]
CONSUMER_PENDING = Gauge("paysaga_consumer_pending", "Messages not yet delivered to a durable consumer", _CONSUMER)
CONSUMER_ACK_PENDING = Gauge("paysaga_consumer_ack_pending", "Messages delivered, not yet acknowledged", _CONSUMER)
CONSUMER_REDELIVERED = Gauge("paysaga_consumer_redelivered", "Messages delivered more than once", _CONSUMER)
CONSUMER_OLDEST_AGE_SECONDS = Gauge(
    "paysaga_consumer_oldest_age_seconds", "Age of the oldest message not yet acknowledged (0: none)", _CONSUMER
)
EVENTS_PUBLISHED = Counter("paysaga_events_published", "Events the outbox relay published", ["event_type"])
LANE_WAIT_SECONDS = Histogram(
    "paysaga_lane_wait_seconds",
    "From an event's storage in its stream to its handling starting, by lane",
    ["lane"],
    buckets=_LATENCY_BUCKETS,
)
ATOMIC_BATCHES = Counter(
    "paysaga_atomic_batches",
    "Atomic batches of events published to JetStream: stored, refused (then published one by one) or failed",
    ["outcome"],
)
RELAY_LAG_SECONDS = Histogram(
    "paysaga_relay_lag_seconds", "From an event's commit to JetStream's acknowledgement", buckets=_LATENCY_BUCKETS
)
SAGAS_ENDED = Counter("paysaga_sagas_ended", "Payments that reached a terminal status", ["outcome", "tier"])
ADMISSION_REFUSALS = Counter("paysaga_admission_refusals", "Purchases refused while too many were in flight", ["tier"])
DECISIONS = Counter("paysaga_decisions", "The fraud rules' decisions", ["action"])
DECISION_SECONDS = Histogram(
    "paysaga_decision_seconds",
    "Gathering a purchase's inputs and evaluating every rule",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01),
)
RULE_HITS = Counter("paysaga_rule_hits", "Rules whose condition held (mode shadow: would have)", ["rule", "mode"])
RULE_ERRORS = Counter("paysaga_rule_errors", "Rule conditions that failed to evaluate (taken as not held)", ["rule"])
RULES_RELOADS = Counter("paysaga_rules_reloads", "Changed rules files read (outcome loaded or refused)", ["outcome"])
TRAFFIC_SPIKES = Counter("paysaga_traffic_spikes", "Traffic spikes detected (kind region or merchant)", ["kind"])


async def _metrics(_request: web.Request) -> web.Response:
    body = generate_latest(REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def application() -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    return app


async def serve_metrics(bind: str, files: TlsFiles, stop: asyncio.Event) -> None:
    """Serve /metrics on bind (host:port) over mutual TLS until stop is set."""
    host, _, port = bind.rpartition(":")
    await serve_https(application(), host, int(port), files, stop, name="metrics")


async def follow_consumers(
    jetstream: JetStreamContext, consumers: list[tuple[str, str, str]], stop: asyncio.Event
) -> None:
    """Keep the consumer gauges current: (stream, durable name, lane) of each of this service's consumers."""
    while not stop.is_set():
        for stream, durable, lane in consumers:
            try:
                status = await read_lane_status(jetstream, stream, durable, lane)
            except Exception as error:  # noqa: BLE001 - a gauge left as it was is the right answer to any failure
                log.debug("metrics.consumer_unreadable", extra={"consumer": durable, "error": repr(error)})
                continue
            CONSUMER_PENDING.labels(durable, lane).set(status.pending)
            CONSUMER_ACK_PENDING.labels(durable, lane).set(status.ack_pending)
            CONSUMER_REDELIVERED.labels(durable, lane).set(status.redelivered)
            CONSUMER_OLDEST_AGE_SECONDS.labels(durable, lane).set(status.oldest_age_s)
        await sleep_or_stop(stop, CONSUMER_POLL_INTERVAL_S)
