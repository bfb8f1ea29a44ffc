"""The load generator: purchases through the public gRPC API, each followed to its terminal status.

A purchase is created with ``CreatePayment`` over mTLS with a bearer token, as any client would.
Its end is observed on the payments service's own event stream (PaymentCompleted, PaymentFailed,
...), which payments commits in the same transaction as the terminal status: the latency is the
time from sending the create to seeing the terminal event, so it includes the outbox relay. One
stream consumer for every purchase keeps the observer's cost out of the services (a
``WatchPayment`` stream per purchase would add a server stream per saga to what is measured).

Two ways to offer load:
- closed loop: N workers, each creating a purchase and waiting for its end before the next;
- open loop: purchases created at a fixed rate whatever happens to earlier ones (how latency
  must be measured: a slow system does not slow the arrivals down).

The mix decides each purchase's intended outcome: most complete, some ask for an item that is out
of stock (the ledger's hold is released) and some come from a wallet without funds. Any other
outcome, an RPC error or a purchase that does not end within the bound counts as an error.

With lanes (the ``lanes`` scenario), each purchase also has an SLA tier (80% standard, 15%
priority, 5% critical by default), and some are undone: cancelled as soon as they are created
(CANCELLED, or COMPLETED when the saga won the race) or refunded once completed (REFUNDED); the
time from the cancel or refund to its terminal event is the compensation's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import eventing
from paysaga.ledger.v1 import ledger_pb2
from paysaga.ops.client.clients import ServiceClients
from paysaga.payments.v1 import payments_pb2
from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.consumer import Subscription
from paysaga.runtime.settings import TlsFiles

log = logging.getLogger(__name__)
CURRENCY = "EUR"
PRICE_MINOR = 100
WALLET_FUNDS_MINOR = 10**13
STOCK_PER_SKU = 1_000_000
RPC_TIMEOUT_S = 30.0
# A purchase that has not ended this long after its create counts as an error.
TERMINAL_TIMEOUT_S = 60.0
SETUP_CONCURRENCY = 32
OBSERVER_BATCH = 512
MAX_IN_FLIGHT = 50_000
MAX_EARLY_ENDINGS = 100_000
OBSERVER_RETRY_S = 0.5
TERMINAL_EVENTS = {
    "PaymentCompleted": "COMPLETED",
    "PaymentFailed": "FAILED",
    "PaymentRejected": "REJECTED",
    "PaymentCancelled": "CANCELLED",
    "PaymentRefunded": "REFUNDED",
}


class Intent(enum.Enum):
    SUCCESS = "success"
    OUT_OF_STOCK = "out_of_stock"
    INSUFFICIENT_FUNDS = "insufficient_funds"

    @property
    def expected_status(self) -> str:
        return "COMPLETED" if self is Intent.SUCCESS else "FAILED"


@dataclass(frozen=True)
class Mix:
    """Shares of each intended outcome, in percent."""

    success: int = 90
    out_of_stock: int = 5
    insufficient_funds: int = 5

    @classmethod
    def parse(cls, text: str) -> Mix:
        parts = [int(part) for part in text.split(",")]
        if len(parts) != 3 or any(part < 0 for part in parts) or sum(parts) != 100:
            raise ValueError(f"the mix is three percentages adding up to 100 (success,out-of-stock,no-funds): {text!r}")
        return cls(*parts)

    def chooser(self, seed: int) -> Callable[[], Intent]:
        generator = random.Random(seed)
        intents = [Intent.SUCCESS, Intent.OUT_OF_STOCK, Intent.INSUFFICIENT_FUNDS]
        weights = [self.success, self.out_of_stock, self.insufficient_funds]
        return lambda: generator.choices(intents, weights)[0]


@dataclass(frozen=True)
class Fixtures:
    """Accounts and items the purchases use, created through the API before the run."""

    merchant: str
    wallets: tuple[str, ...]
    empty_wallets: tuple[str, ...]
    skus: tuple[str, ...]
    out_of_stock_sku: str


TIERS = ("standard", "priority", "critical")


@dataclass(frozen=True)
class Lanes:
    """The tier of each purchase and which are undone, in percent."""

    standard: int = 80
    priority: int = 15
    critical: int = 5
    cancel: int = 5
    refund: int = 5

    def chooser(self, seed: int) -> Callable[[], tuple[str, str]]:
        """(tier, follow-up: "", "cancel" or "refund") for each purchase."""
        generator = random.Random(seed + 2)
        weights = [self.standard, self.priority, self.critical]
        follow_ups = ["", "cancel", "refund"]
        undo = [100 - self.cancel - self.refund, self.cancel, self.refund]
        return lambda: (generator.choices(TIERS, weights)[0], generator.choices(follow_ups, undo)[0])


@dataclass
class Saga:
    intent: Intent
    created_s: float
    ended_s: float | None = None
    status: str = ""
    error: str = ""
    tier: str = "standard"
    accepted_s: float | None = None  # when CreatePayment answered
    follow_up: str = ""  # "cancel" or "refund": undone once created or completed
    compensation_started_s: float | None = None
    compensation_ended_s: float | None = None
    final_status: str = ""  # after the compensation
    payment_id: str = ""
    created_unix_s: float = 0.0  # created_s on the wall clock, to compare with JetStream's times

    @property
    def compensation_s(self) -> float | None:
        if self.compensation_started_s is None or self.compensation_ended_s is None:
            return None
        return self.compensation_ended_s - self.compensation_started_s

    @property
    def latency_s(self) -> float | None:
        return None if self.ended_s is None else self.ended_s - self.created_s


async def _bounded(concurrency: int, calls: list[Callable[[], object]]) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], object]) -> None:
        async with semaphore:
            await call()  # type: ignore[misc]

    await asyncio.gather(*(one(call) for call in calls))


async def create_fixtures(clients: ServiceClients, *, wallets: int, empty_wallets: int, skus: int) -> Fixtures:
    def account(kind: ledger_pb2.AccountKind.ValueType, funds_minor: int) -> tuple[str, Callable[[], object]]:
        account_id = str(uuid.uuid4())
        return account_id, lambda: clients.open_account(
            kind,
            currency=CURRENCY,
            owner="bench",
            funds_minor=funds_minor,
            timeout_s=RPC_TIMEOUT_S,
            account_id=account_id,
        )

    def item(stock: int) -> tuple[str, Callable[[], object]]:
        sku = f"bench-{uuid.uuid4().hex[:12]}"
        return sku, lambda: clients.add_item(
            sku, name="bench item", price_minor=PRICE_MINOR, currency=CURRENCY, stock=stock, timeout_s=RPC_TIMEOUT_S
        )

    merchant = account(ledger_pb2.ACCOUNT_KIND_MERCHANT, 0)
    funded = [account(ledger_pb2.ACCOUNT_KIND_WALLET, WALLET_FUNDS_MINOR) for _ in range(wallets)]
    empty = [account(ledger_pb2.ACCOUNT_KIND_WALLET, 0) for _ in range(empty_wallets)]
    stocked = [item(STOCK_PER_SKU) for _ in range(skus)]
    missing = item(0)
    everything = [merchant, *funded, *empty, *stocked, missing]
    await _bounded(SETUP_CONCURRENCY, [create for _, create in everything])
    return Fixtures(
        merchant=merchant[0],
        wallets=tuple(account_id for account_id, _ in funded),
        empty_wallets=tuple(account_id for account_id, _ in empty),
        skus=tuple(sku for sku, _ in stocked),
        out_of_stock_sku=missing[0],
    )


class TerminalObserver:
    """Follows the payments event stream and tells each waiting purchase how it ended."""

    def __init__(self, client: NatsClient) -> None:
        self._client = client
        self._waiting: dict[str, tuple[Saga, asyncio.Future[None]]] = {}
        self._ended: dict[str, tuple[float, str]] = {}  # ended before its create returned
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, nats_url: str, files: TlsFiles) -> TerminalObserver:
        client = await streams.connect(nats_url, files, name="bench-observer", timeout_s=30)
        observer = cls(client)
        await observer._start()
        return observer

    async def _start(self) -> None:
        jetstream = self._client.jetstream()
        name = f"bench-{uuid.uuid4().hex[:12]}"
        endings = Subscription("payments", tuple(TERMINAL_EVENTS))
        await jetstream.add_consumer(
            endings.stream,
            ConsumerConfig(
                name=name,
                deliver_policy=DeliverPolicy.NEW,
                ack_policy=AckPolicy.NONE,
                filter_subjects=endings.filter_subjects(),
                inactive_threshold=60.0,
            ),
        )
        subscription = await jetstream.pull_subscribe_bind(consumer=name, stream=endings.stream)
        self._task = asyncio.create_task(self._follow(subscription))

    async def _follow(self, subscription: JetStreamContext.PullSubscription) -> None:
        while True:
            try:
                messages = await subscription.fetch(OBSERVER_BATCH, timeout=1.0)
            except TimeoutError:
                continue
            except nats.errors.Error as error:  # e.g. a reconnect: the consumer keeps our place
                log.warning("observer.fetch_failed: %r", error)
                await asyncio.sleep(OBSERVER_RETRY_S)
                continue
            now = time.perf_counter()
            for message in messages:
                envelope = eventing.parse(message.data)
                status = TERMINAL_EVENTS[envelope.event_type]
                waiting = self._waiting.pop(envelope.saga_id, None)
                if waiting is None:
                    if len(self._ended) >= MAX_EARLY_ENDINGS:  # purchases nobody waits for any more
                        self._ended.pop(next(iter(self._ended)))
                    self._ended[envelope.saga_id] = (now, status)
                    continue
                saga, ended = waiting
                if not ended.done():  # not given up on meanwhile
                    saga.ended_s, saga.status = now, status
                    ended.set_result(None)

    async def wait(self, payment_id: str, saga: Saga, deadline_s: float) -> None:
        """Until the purchase has ended, or deadline_s (perf_counter) has passed."""
        early = self._ended.pop(payment_id, None)
        if early is not None:
            saga.ended_s, saga.status = early
            return
        ended = asyncio.get_running_loop().create_future()
        self._waiting[payment_id] = (saga, ended)
        try:
            await asyncio.wait_for(ended, timeout=max(0.0, deadline_s - time.perf_counter()))
        except TimeoutError:
            self._waiting.pop(payment_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    @property
    def client(self) -> NatsClient:
        """Its NATS connection (as ops), for reading the streams after a run."""
        return self._client

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.close()


@dataclass
class Run:
    """Every purchase of one scenario, and the calls that failed."""

    sagas: list[Saga] = field(default_factory=list)
    ended: int = 0  # so far, for the progress bar
    errors: int = 0
    not_sent: int = 0


class LoadGenerator:
    def __init__(
        self,
        clients: ServiceClients,
        observer: TerminalObserver,
        fixtures: Fixtures,
        mix: Mix,
        seed: int,
        lanes: Lanes | None = None,
    ) -> None:
        self._clients = clients
        self._observer = observer
        self._fixtures = fixtures
        self._choose = mix.chooser(seed)
        self._pick = random.Random(seed + 1)
        self._lanes = lanes.chooser(seed) if lanes is not None else None

    def _request(self, intent: Intent, tier: str = "standard") -> payments_pb2.CreatePaymentRequest:
        fixtures = self._fixtures
        wallets = fixtures.empty_wallets if intent is Intent.INSUFFICIENT_FUNDS else fixtures.wallets
        sku = fixtures.out_of_stock_sku if intent is Intent.OUT_OF_STOCK else self._pick.choice(fixtures.skus)
        return payments_pb2.CreatePaymentRequest(
            idempotency_key=str(uuid.uuid4()),
            payer_account_id=self._pick.choice(wallets),
            merchant_account_id=fixtures.merchant,
            sku=sku,
            quantity=1,
            amount=Money(amount_minor=PRICE_MINOR, currency=CURRENCY),
            sla_tier=payments_pb2.SlaTier.Value(f"SLA_TIER_{tier.upper()}"),
        )

    async def one(self, run: Run, due_s: float | None = None) -> None:
        """Create one purchase and wait for its end (or the bound). Its latency counts from due_s
        when given (the open loop's schedule), so a late start is measured too."""
        intent = self._choose()
        tier, follow_up = self._lanes() if self._lanes is not None else ("standard", "")
        if intent is not Intent.SUCCESS:
            follow_up = ""  # only a purchase that would complete is undone
        request = self._request(intent, tier)
        created_s = time.perf_counter() if due_s is None else due_s
        saga = Saga(intent, created_s, tier=tier, follow_up=follow_up)
        saga.created_unix_s = time.time() - (time.perf_counter() - created_s)
        run.sagas.append(saga)
        try:
            await self._follow(saga, request, intent)
        finally:
            run.ended += saga.ended_s is not None
            run.errors += bool(saga.error)

    async def _follow(self, saga: Saga, request: payments_pb2.CreatePaymentRequest, intent: Intent) -> None:
        try:
            response = await self._clients.payments.CreatePayment(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            saga.error = error.code().name
            return
        saga.accepted_s = time.perf_counter()
        payment_id = saga.payment_id = response.payment.payment_id
        if saga.follow_up == "cancel" and not await self._undo(saga, payment_id):
            return
        await self._observer.wait(payment_id, saga, saga.created_s + TERMINAL_TIMEOUT_S)
        if saga.ended_s is None:
            saga.error = "NOT_TERMINAL"
        elif saga.follow_up == "cancel":
            saga.compensation_ended_s = saga.ended_s
            saga.final_status = saga.status
            if saga.status not in ("CANCELLED", "COMPLETED"):  # COMPLETED: the cancel came too late
                saga.error = f"UNEXPECTED_{saga.status}"
        elif saga.status != intent.expected_status:
            saga.error = f"UNEXPECTED_{saga.status}"
        elif saga.follow_up == "refund":
            await self._refund(saga, payment_id)

    async def _undo(self, saga: Saga, payment_id: str) -> bool:
        """Cancel at once; False if the call failed (a cancel refused because the purchase already
        completed is no failure: it then ends COMPLETED)."""
        saga.compensation_started_s = time.perf_counter()
        request = payments_pb2.CancelPaymentRequest(payment_id=payment_id, reason="bench: changed my mind")
        try:
            await self._clients.payments.CancelPayment(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                saga.error = f"CANCEL_{error.code().name}"
                return False
            saga.compensation_started_s = None  # nothing to undo: it had completed
        return True

    async def _refund(self, saga: Saga, payment_id: str) -> None:
        saga.compensation_started_s = time.perf_counter()
        request = payments_pb2.RefundPaymentRequest(payment_id=payment_id, reason="bench: returned")
        try:
            await self._clients.payments.RefundPayment(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            saga.error = f"REFUND_{error.code().name}"
            return
        refunded = Saga(saga.intent, saga.compensation_started_s)
        await self._observer.wait(payment_id, refunded, saga.compensation_started_s + TERMINAL_TIMEOUT_S)
        saga.compensation_ended_s, saga.final_status = refunded.ended_s, refunded.status
        if refunded.status != "REFUNDED":
            saga.error = f"REFUND_ENDED_{refunded.status or 'NOT_TERMINAL'}"

    async def closed_loop(self, run: Run, concurrency: int, until_s: float) -> None:
        async def worker() -> None:
            while time.perf_counter() < until_s:
                await self.one(run)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def open_loop(self, run: Run, rate_per_s: float, until_s: float) -> None:
        """Start purchases at rate_per_s until until_s, whatever the earlier ones are doing."""
        interval_s = 1.0 / rate_per_s
        tasks: set[asyncio.Task[None]] = set()
        due_s = time.perf_counter()
        while due_s < until_s:
            now = time.perf_counter()
            while due_s <= now and due_s < until_s:
                if len(tasks) >= MAX_IN_FLIGHT:
                    run.not_sent += 1
                else:
                    task = asyncio.create_task(self.one(run, due_s))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                due_s += interval_s
            await asyncio.sleep(max(0.0, due_s - time.perf_counter()))
        if tasks:
            await asyncio.gather(*tasks)
