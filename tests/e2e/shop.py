"""A client of the running cluster for the saga tests: sets up wallets and stock, pays, waits,
and reads back what a user can see (payment, balances, stock) and what the saga emitted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
import sqlalchemy as sa
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy.ext.asyncio import create_async_engine

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import eventing
from paysaga.core.eventing import EventEnvelope
from paysaga.inventory.v1 import inventory_pb2
from paysaga.ledger.v1 import ledger_pb2
from paysaga.ops.checks import invariants
from paysaga.ops.client.trace import fetch_when_ready
from paysaga.ops.cluster.localcluster import SERVICES, LocalCluster
from paysaga.payments.v1 import payments_pb2
from tests.helpers import connect_as

T = TypeVar("T")

TERMINAL = {
    payments_pb2.PAYMENT_STATUS_COMPLETED,
    payments_pb2.PAYMENT_STATUS_FAILED,
    payments_pb2.PAYMENT_STATUS_CANCELLED,
    payments_pb2.PAYMENT_STATUS_REJECTED,
    payments_pb2.PAYMENT_STATUS_REFUNDED,
}
CURRENCY = "EUR"


@dataclass(frozen=True)
class Purchase:
    payer: str
    merchant: str
    sku: str


class Shop:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.clients = cluster.service_clients()
        self.payments = self.clients.payments
        self.inventory = self.clients.inventory
        self.ledger = self.clients.ledger

    async def close(self) -> None:
        await self.clients.close()

    async def open_account(self, kind: ledger_pb2.AccountKind.ValueType, funds_minor: int = 0) -> str:
        return await self.clients.open_account(
            kind, currency=CURRENCY, owner="test", funds_minor=funds_minor, timeout_s=10
        )

    async def add_item(self, stock: int, price_minor: int = 1250) -> str:
        sku = f"sku-{uuid.uuid4().hex[:12]}"
        await self.clients.add_item(
            sku, name="test item", price_minor=price_minor, currency=CURRENCY, stock=stock, timeout_s=10
        )
        return sku

    async def setup(self, *, funds_minor: int, stock: int, price_minor: int = 1250) -> Purchase:
        return Purchase(
            await self.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, funds_minor),
            await self.open_account(ledger_pb2.ACCOUNT_KIND_MERCHANT),
            await self.add_item(stock, price_minor),
        )

    async def pay(
        self,
        purchase: Purchase,
        *,
        amount_minor: int,
        quantity: int = 1,
        key: str | None = None,
        tier: payments_pb2.SlaTier.ValueType = payments_pb2.SLA_TIER_STANDARD,
        region: str = "",
    ) -> payments_pb2.Payment:
        response = await self.create(
            purchase, amount_minor=amount_minor, quantity=quantity, key=key, tier=tier, region=region
        )
        return response.payment

    async def create(
        self,
        purchase: Purchase,
        *,
        amount_minor: int,
        quantity: int = 1,
        key: str | None = None,
        tier: payments_pb2.SlaTier.ValueType = payments_pb2.SLA_TIER_STANDARD,
        region: str = "",
    ) -> payments_pb2.CreatePaymentResponse:
        response: payments_pb2.CreatePaymentResponse = await self.payments.CreatePayment(
            payments_pb2.CreatePaymentRequest(
                idempotency_key=key or str(uuid.uuid4()),
                payer_account_id=purchase.payer,
                merchant_account_id=purchase.merchant,
                sku=purchase.sku,
                quantity=quantity,
                amount=Money(amount_minor=amount_minor, currency=CURRENCY),
                sla_tier=tier,
                region=region,
            ),
            timeout=10,
        )
        return response

    async def payment(self, payment_id: str) -> payments_pb2.Payment:
        payment: payments_pb2.Payment = await self.payments.GetPayment(
            payments_pb2.GetPaymentRequest(payment_id=payment_id), timeout=10, wait_for_ready=True
        )
        return payment

    async def wait_for(
        self,
        payment_id: str,
        statuses: set[payments_pb2.PaymentStatus.ValueType],
        timeout_s: float = 30.0,
        poll_s: float = 0.05,
    ) -> payments_pb2.Payment:
        deadline = time.monotonic() + timeout_s
        while True:
            # A service being restarted answers UNAVAILABLE for a moment: keep polling.
            payment = await retry_while(lambda: self.payment(payment_id), grpc.StatusCode.UNAVAILABLE, deadline, poll_s)
            if payment.status in statuses or time.monotonic() > deadline:
                return payment
            await asyncio.sleep(poll_s)

    async def finish(self, payment_id: str, timeout_s: float = 30.0) -> payments_pb2.Payment:
        return await self.wait_for(payment_id, TERMINAL, timeout_s)

    async def balance(self, account_id: str) -> tuple[int, int, int]:
        balance = await self.ledger.GetBalance(
            ledger_pb2.GetBalanceRequest(account_id=account_id), timeout=10, wait_for_ready=True
        )
        return balance.balance_minor, balance.held_minor, balance.available_minor

    async def stock(self, sku: str) -> tuple[int, int, int]:
        item = await self.inventory.GetItem(inventory_pb2.GetItemRequest(sku=sku), timeout=10, wait_for_ready=True)
        return item.quantity_available, item.quantity_reserved, item.quantity_sold

    async def saga_events(self, saga_id: str, timeout_s: float = 20.0) -> list[EventEnvelope]:
        """Every event of the saga on the three event streams, in the order they happened, once
        the services have published everything they committed."""
        return await self.events(lambda envelope: envelope.saga_id == saga_id, timeout_s)

    async def events(self, wanted: Callable[[EventEnvelope], bool], timeout_s: float = 20.0) -> list[EventEnvelope]:
        """The events on the three event streams that are wanted, in the order they happened, once
        the services have published everything they committed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await self.unpublished_events():
                break
            await asyncio.sleep(0.05)
        client = await connect_as(self.cluster.nats_url, self.cluster.tls_files("ops"))
        found: list[EventEnvelope] = []
        try:
            jetstream = client.jetstream()
            for service in SERVICES:
                config = ConsumerConfig(
                    deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30
                )
                subscription = await jetstream.pull_subscribe(
                    f"paysaga.events.{service}.>", stream=f"{service.upper()}_EVENTS", config=config
                )
                pending = (await subscription.consumer_info()).num_pending or 0
                while pending > 0:
                    messages = await fetch_when_ready(subscription, min(pending, 256))
                    pending -= len(messages)
                    found += [envelope for envelope in map(_decode, messages) if wanted(envelope)]
                await subscription.unsubscribe()
        finally:
            await client.close()
        return sorted(found, key=lambda envelope: envelope.occurred_at.ToNanoseconds())

    async def event_types(self, saga_id: str) -> list[str]:
        return [envelope.event_type for envelope in await self.saga_events(saga_id)]

    async def unpublished_events(self) -> int:
        """Events committed to the services' outboxes that the relays have not published yet."""
        total = 0
        for service in SERVICES:
            engine = create_async_engine(self.cluster.database_url(service))
            try:
                async with engine.connect() as connection:
                    total += int(
                        await connection.scalar(sa.text("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")) or 0
                    )
            finally:
                await engine.dispose()
        return total

    async def busy_consumers(self) -> list[str]:
        """Durable consumers that still have events to deliver or to see acknowledged."""
        client = await connect_as(self.cluster.nats_url, self.cluster.tls_files("ops"))
        try:
            jetstream = client.jetstream()
            return [
                str(consumer.name)
                for service in SERVICES
                for consumer in await jetstream.consumers_info(f"{service.upper()}_EVENTS")
                if consumer.config.durable_name and (consumer.num_pending or consumer.num_ack_pending)
            ]
        finally:
            await client.close()

    async def dead_letters(self) -> dict[str, int]:
        """Parked messages per dead-letter stream that holds any."""
        client = await connect_as(self.cluster.nats_url, self.cluster.tls_files("ops"))
        try:
            jetstream = client.jetstream()
            counts = {
                f"{service.upper()}_DEAD_LETTERS": (
                    await jetstream.stream_info(f"{service.upper()}_DEAD_LETTERS")
                ).state.messages
                for service in SERVICES
            }
        finally:
            await client.close()
        return {stream: count for stream, count in counts.items() if count}

    async def invariants(self, *, require_terminal: bool = True) -> invariants.Report:
        return await invariants.check(
            *(self.cluster.database_url(service) for service in ("ledger", "inventory", "payments")),
            require_terminal=require_terminal,
        )


def _decode(message: object) -> EventEnvelope:
    return eventing.parse(message.data)  # type: ignore[attr-defined]


def status_name(payment: payments_pb2.Payment) -> str:
    return payments_pb2.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")


async def retry_while(call: Callable[[], Awaitable[T]], code: grpc.StatusCode, deadline: float, poll_s: float) -> T:
    """call's answer; while it fails with code (a passing condition), called again until deadline."""
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() != code or time.monotonic() > deadline:
                raise
            await asyncio.sleep(poll_s)
