"""Build the payments service from its settings, with its dependencies passed in."""

from __future__ import annotations

import time
from pathlib import Path

from nats.js import JetStreamContext

from paysaga.runtime.messaging.consumer import subscriptions_for
from paysaga.runtime.service_process import ServiceDefinition, Worker
from paysaga.runtime.settings import ServiceSettings
from paysaga.runtime.storage.unit_of_work import Database
from services.payments import config, handlers, timeouts
from services.payments.adapters import grpc_api, tables
from services.payments.adapters.repository import PaymentsUnit
from services.payments.domain import PaymentLimits
from services.payments.rules import reload
from services.payments.rules.screening import RulesInForce, Screening
from services.payments.rules.spikes import SpikeDetector, SpikeSettings
from services.payments.rules.stats import HISTORY_S, TrafficStats
from services.payments.rules.traffic import TrafficFollower

# The producers and event types this service consumes: whatever its handlers handle.
SUBSCRIPTIONS = subscriptions_for(handlers.EVENT_HANDLERS)


def screening(limits: PaymentLimits, now_s: float) -> Screening:
    """The rules (from the rules file, or the built-in ones) and empty statistics that count from
    24 h before now_s (what the stream is read from)."""
    rules = RulesInForce(reload.load(Path(limits.rules_file)) if limits.rules_file else None)
    stats = TrafficStats(limits.stats_bucket_s, limits.baseline_buckets, now_s - HISTORY_S, limits.stats_half_life_s)
    spikes = SpikeSettings(limits.spike_z, limits.spike_min_count, limits.spike_min_buckets, limits.spike_hold_buckets)
    return Screening(rules, stats, SpikeDetector(stats, spikes), limits)


def bootstrap(settings: ServiceSettings) -> ServiceDefinition[PaymentsUnit]:
    limits = config.payment_limits(settings)
    screen = screening(limits, time.time())

    def workers(database: Database[PaymentsUnit], jetstream: JetStreamContext) -> list[Worker]:
        follower = TrafficFollower(screen.stats, screen.spikes, database)
        found: list[Worker] = [timeouts.deadline_sweeper(database, limits), lambda stop: follower.run(jetstream, stop)]
        if limits.rules_file:
            found.append(reload.RulesFileWatcher(Path(limits.rules_file), screen.rules).run)
        return found

    return ServiceDefinition(
        name=settings.service,
        metadata=tables.metadata,
        migrations=Path(__file__).parent / "migrations",
        unit=PaymentsUnit,
        grpc_services=lambda database: [grpc_api.grpc_service(database, limits, screen)],
        subscriptions=SUBSCRIPTIONS,
        handlers=handlers.EVENT_HANDLERS,
        workers=workers,
    )
