"""Every service process serves Prometheus metrics over mutual TLS; after a purchase they show
what a person operating the cluster relies on: sagas by outcome and tier, events handled and
published, the relay's lag, each consumer's backlog, the process's own CPU and memory."""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from paysaga.ops.cluster.localcluster import AUTHORIZATION_SERVER, SERVICES, LocalCluster
from paysaga.payments.v1 import payments_pb2
from paysaga.runtime.security import tls
from tests.e2e.shop import Shop, status_name
from tests.helpers import ssl_context_without_client_certificate

pytestmark = pytest.mark.e2e
PRICE = 1250
# What the README documents; each is exposed by every service (labelled ones with their HELP and
# TYPE even before the first sample).
DOCUMENTED = (
    "paysaga_events_handled",
    "paysaga_event_handling_seconds",
    "paysaga_dead_letters",
    "paysaga_consumer_pending",
    "paysaga_consumer_oldest_age_seconds",
    "paysaga_lane_wait_seconds",
    "paysaga_consumer_ack_pending",
    "paysaga_consumer_redelivered",
    "paysaga_events_published",
    "paysaga_relay_lag_seconds",
    "paysaga_sagas_ended",
    "paysaga_admission_refusals",
    "process_cpu_seconds",
    "process_resident_memory_bytes",
)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(cluster: LocalCluster, instance: str, context: ssl.SSLContext) -> tuple[set[str], Samples]:
    """The metric families and the samples (summed by name and labels) one process serves."""
    url = f"https://{cluster.metrics_target(instance)}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as response:
        assert response.status == 200
        text = await response.text()
    families = set()
    samples: Samples = defaultdict(float)
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return families, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value for (key, found), value in samples.items() if key == name and labels.items() <= dict(found).items()
    )


async def test_metrics_show_sagas_events_relay_and_consumers(shop: Shop) -> None:
    cluster = shop.cluster
    purchase = await shop.setup(funds_minor=2 * PRICE, stock=2)
    payment = await shop.pay(purchase, amount_minor=PRICE, tier=payments_pb2.SLA_TIER_PRIORITY)
    assert status_name(await shop.finish(payment.payment_id)) == "COMPLETED"
    await asyncio.sleep(6)  # the consumer gauges are read every 5 s
    context = tls.client_ssl_context(cluster.tls_files("ops"))

    scraped = {
        instance: await scrape(cluster, instance, context)
        for service in (*SERVICES, AUTHORIZATION_SERVER)
        for instance in cluster.instances(service)
    }

    for instance, (families, _) in scraped.items():
        missing = [name for name in DOCUMENTED if name not in families]
        assert not missing, f"{instance} lacks {missing}"

    def summed(service: str, name: str, **labels: str) -> float:
        return sum(total(scraped[instance][1], name, **labels) for instance in cluster.instances(service))

    assert summed("payments", "paysaga_sagas_ended_total", outcome="COMPLETED", tier="priority") >= 1
    assert summed("ledger", "paysaga_events_handled_total", event_type="PaymentRequested", outcome="applied") >= 1
    assert summed("inventory", "paysaga_events_handled_total", event_type="FundsHeld", outcome="applied") >= 1
    assert summed("payments", "paysaga_event_handling_seconds_count", event_type="FundsCaptured") >= 1
    assert summed("ledger", "paysaga_events_published_total", event_type="FundsHeld") >= 1
    assert summed("payments", "paysaga_relay_lag_seconds_count") >= 1
    for service in SERVICES:
        assert summed(service, "process_cpu_seconds_total") > 0
    # Each lane consumer reports its backlog and the age of its oldest event (zero or more).
    ledger_samples = scraped[cluster.instances("ledger")[0]][1]
    for lane in ("compensation", "critical", "priority", "standard"):
        labels = (("consumer", f"ledger-from-payments-{lane}"), ("lane", lane))
        assert ("paysaga_consumer_pending", labels) in ledger_samples
        assert ("paysaga_consumer_oldest_age_seconds", labels) in ledger_samples
    # This test's purchase was a priority one: its forward steps waited on the priority lane.
    assert summed("ledger", "paysaga_lane_wait_seconds_count", lane="priority") >= 1


async def test_the_metrics_endpoint_refuses_a_peer_without_our_certificate(shop: Shop) -> None:
    cluster = shop.cluster
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        await scrape(cluster, "payments", ssl_context_without_client_certificate(cluster.certs_dir / "ca.crt"))
