"""A seeded world for the purchase saga (TigerBeetle's VOPR idea, at our scale).

The three services' real handlers run over their own SQLite databases, with their real outbox and
inbox, joined by an in-memory bus instead of JetStream. One seed decides everything the world
does: which events a consumer gets next (so events of different streams and of different lanes,
compensations overtaking the steps they undo, and redeliveries, come in any order; a purchase's
tier is drawn at random, and compensation lanes are picked more often, as they are served
first), which acks are lost (a consumer that crashed between commit and ack gets the event
again), which events are delivered twice, when outboxes are relayed (and relays that publish but
crash before marking), and, in between, what clients and the world do: purchases, cancels,
refunds, deadlines that pass, a merchant spending what it earned, stock received.

Afterwards the world settles (everything delivered; a payment still in flight with nothing left
to deliver has its deadline pass, as the sweeper would), and the verdict is what a user relies on:
every payment terminal, the invariants of paysaga.ops.checks.invariants, nothing parked.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core import eventing, lanes
from paysaga.core.access import Caller
from paysaga.core.errors import DomainError
from paysaga.core.eventing import EventEnvelope
from paysaga.core.identity import client_identity
from paysaga.ops.checks import invariants
from paysaga.runtime.messaging.consumer import MAX_ATTEMPTS, EventHandler, Subscription, apply_event
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import Database, UnitOfWork
from services.inventory import bootstrap as inventory_bootstrap
from services.inventory import handlers as inventory_handlers
from services.inventory.adapters import tables as inventory_tables
from services.inventory.adapters.repository import InventoryUnit
from services.inventory.domain import Item
from services.ledger import bootstrap as ledger_bootstrap
from services.ledger import handlers as ledger_handlers
from services.ledger.adapters import tables as ledger_tables
from services.ledger.adapters.repository import LedgerUnit
from services.ledger.domain import Account, AccountKind
from services.payments import bootstrap as payments_bootstrap
from services.payments import handlers as payments_handlers
from services.payments.adapters import tables as payments_tables
from services.payments.adapters.repository import PaymentsUnit
from services.payments.domain import Action, Decision, PaymentLimits, PurchaseRequest, RuleHit, ScoreThresholds, decide
from services.reconcile import sources
from services.reconcile.compare import reconcile
from services.reconcile.domain import Window
from services.reconcile.observations import Observations

CURRENCY = "EUR"
PRICE_MINOR = 1250
FUNDS_MINOR = 5000
SKUS = ("mug", "gadget")
STOCK = 3
# Everything happens as ops (admin everywhere): the simulator is about the saga, not about who may
# start it (tests/integration/test_handlers.py is), and a merchant spending its balance pays from
# a merchant account, which only ops may do.
OPS = Caller(client_identity("ops"), frozenset({"payments:admin", "inventory:admin", "ledger:admin"}))
# Generous limits: the simulator is about the saga, not the threshold rules. Its own screen sends
# some purchases to review, which ops then approve or decline (or whose review deadline passes).
RULES = PaymentLimits(velocity_limit=10_000, max_in_flight=10_000)
REVIEW_CHANCE = 0.3
_REVIEW = (RuleHit("simulated_review", False, Action.REVIEW, 0, "the simulator asks for a review"),)
STEPS = 40
PAYMENTS_MAX = 6
# How far down a consumer's pending events the next delivery may come from (redeliveries).
REORDER_WINDOW = 3
LOST_ACK_CHANCE = 0.15
DUPLICATE_CHANCE = 0.1
RELAY_CRASH_CHANCE = 0.1
SETTLE_ROUNDS_MAX = 200
# How much likelier a compensation lane with events waiting is to deliver next than a tier's lane.
COMPENSATION_PREFERENCE = 4.0


@dataclass(frozen=True)
class ServiceCode:
    """What the simulator runs of one service: its tables, its event handlers, what it consumes."""

    metadata: sa.MetaData
    unit: Callable[[AsyncConnection, Database[UnitOfWork]], UnitOfWork]
    handlers: Mapping[str, EventHandler[Any]]
    subscriptions: Sequence[Subscription]


CURRENT_CODE: Mapping[str, ServiceCode] = {
    "payments": ServiceCode(
        payments_tables.metadata, PaymentsUnit, payments_handlers.EVENT_HANDLERS, payments_bootstrap.SUBSCRIPTIONS
    ),
    "ledger": ServiceCode(
        ledger_tables.metadata, LedgerUnit, ledger_handlers.EVENT_HANDLERS, ledger_bootstrap.SUBSCRIPTIONS
    ),
    "inventory": ServiceCode(
        inventory_tables.metadata, InventoryUnit, inventory_handlers.EVENT_HANDLERS, inventory_bootstrap.SUBSCRIPTIONS
    ),
}
# The world's own clock: it starts here and moves on by STEP_TIME each step, the same in every
# run of a seed.
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
STEP_TIME = dt.timedelta(milliseconds=10)


@dataclass
class Delivery:
    envelope: EventEnvelope
    failures: int = 0


@dataclass
class World:
    seed: int
    directory: Path
    code: Mapping[str, ServiceCode] = field(default_factory=lambda: CURRENT_CODE)
    random: random.Random = field(init=False)
    databases: dict[str, Database[Any]] = field(init=False, default_factory=dict)
    published: set[str] = field(init=False, default_factory=set)
    # Each producer's stream: what it published, once per event id (as Nats-Msg-Id deduplicates).
    streams: defaultdict[str, list[EventEnvelope]] = field(init=False, default_factory=lambda: defaultdict(list))
    # Per consumer (service, producer, lane), the events delivered and not yet acknowledged, in order.
    pending: dict[tuple[str, str, str], list[Delivery]] = field(init=False, default_factory=dict)
    parked: list[str] = field(init=False, default_factory=list)
    payments: list[str] = field(init=False, default_factory=list)
    # Per service, whether it committed events its relay has not marked sent yet.
    unrelayed: dict[str, bool] = field(init=False, default_factory=dict)
    trace: list[str] = field(init=False, default_factory=list)
    clock: dt.datetime = field(init=False, default=EPOCH)
    problems: list[str] = field(init=False, default_factory=list)
    wallets: tuple[str, ...] = field(init=False, default=())
    merchants: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        for service, code in self.code.items():
            for subscription in code.subscriptions:
                self.pending[(service, subscription.producer, subscription.lane)] = []

    def now(self) -> dt.datetime:
        return self.clock

    def url(self, service: str) -> str:
        return f"sqlite+aiosqlite:///{self.directory / f'{service}.db'}"

    # -- the world's lifetime ------------------------------------------------------------------

    async def open(self) -> None:
        for service, code in self.code.items():
            engine = create_engine(self.url(service))
            async with engine.begin() as connection:
                await connection.run_sync(code.metadata.create_all)
            database = Database(engine, code.metadata, code.unit, producer=service, clock=self.now)
            database.on_commit(functools.partial(self._committed, service))
            self.databases[service] = database
        self.wallets = (str(uuid.uuid4()), str(uuid.uuid4()))
        self.merchants = (str(uuid.uuid4()), str(uuid.uuid4()))
        for wallet in self.wallets:
            await self._command(
                "ledger", ledger_handlers.open_account, Account(wallet, AccountKind.WALLET, CURRENCY, "w")
            )
            await self._command("ledger", ledger_handlers.deposit, wallet, FUNDS_MINOR, CURRENCY, str(uuid.uuid4()))
        for merchant in self.merchants:
            account = Account(merchant, AccountKind.MERCHANT, CURRENCY, "m")
            await self._command("ledger", ledger_handlers.open_account, account)
        for sku in SKUS:
            await self._command("inventory", inventory_handlers.add_item, Item(sku, sku, PRICE_MINOR, CURRENCY))
            await self._command("inventory", inventory_handlers.receive_stock, sku, STOCK, str(uuid.uuid4()), OPS)

    def _committed(self, service: str, unit: UnitOfWork) -> None:
        if unit.written:
            self.unrelayed[service] = True

    async def close(self) -> None:
        for database in self.databases.values():
            await database.engine.dispose()

    async def _command(self, service: str, handler: Callable[..., Awaitable[object]], *arguments: object) -> str:
        """A client's or operator's command through the service's own handler; a refusal is an answer."""
        try:
            async with self.databases[service].transaction() as unit:
                await handler(unit, *arguments)
        except DomainError as error:
            return f"refused: {error}"
        return "ok"

    # -- the bus -------------------------------------------------------------------------------

    async def relay(self, service: str) -> None:
        """Publish what the service committed, once per event id (as JetStream's Nats-Msg-Id
        dedup does); sometimes the relay dies after publishing, before marking the rows sent."""
        database = self.databases[service]
        statements = database.statements
        async with database.transaction() as unit:
            rows = list(await unit.connection.execute(statements.unpublished, {"limit": 100}))
            for row in rows:
                self.publish(service, eventing.parse(row.payload))
            if rows and self.random.random() < RELAY_CRASH_CHANCE:
                return  # published, not marked: published again next time, and deduplicated
            if rows:
                await unit.connection.execute(
                    statements.mark_published,
                    {"event_ids": [row.event_id for row in rows], "published_at": self.now()},
                )
        self.unrelayed[service] = False

    def publish(self, producer: str, envelope: EventEnvelope) -> None:
        if envelope.event_id in self.published:
            return
        self.published.add(envelope.event_id)
        self.streams[producer].append(envelope)
        lane = lanes.lane_of(envelope.event_type, envelope.sla_tier)
        for service, code in self.code.items():
            for subscription in code.subscriptions:
                if (subscription.producer, subscription.lane) == (producer, lane) and (
                    envelope.event_type in subscription.event_types
                ):
                    self.pending[(service, producer, lane)].append(Delivery(envelope))

    async def deliver(self, consumer: tuple[str, str, str]) -> None:
        """Hand the consumer one of its first pending events, as its service would handle it."""
        queue = self.pending[consumer]
        index = self.random.randrange(min(REORDER_WINDOW, len(queue)))
        delivery = queue[index]
        service = consumer[0]
        try:
            await apply_event(self.databases[service], self.code[service].handlers, delivery.envelope)
        except Exception as error:  # noqa: BLE001 - a handler's failure: retried, then parked, as in production
            delivery.failures += 1
            queue.append(queue.pop(index))
            if delivery.failures >= MAX_ATTEMPTS:
                queue.remove(delivery)
                self.parked.append(
                    f"{service} parked {delivery.envelope.event_type} of {delivery.envelope.saga_id}: {error!r}"
                )
            return
        roll = self.random.random()
        if roll < LOST_ACK_CHANCE:
            queue.append(queue.pop(index))  # the ack was lost: delivered again later
        elif roll < LOST_ACK_CHANCE + DUPLICATE_CHANCE:
            pass  # delivered twice in a row
        else:
            queue.pop(index)

    # -- what clients and the world do -------------------------------------------------------------

    async def step(self) -> None:
        """One random thing happens."""
        busy = [consumer for consumer, queue in self.pending.items() if queue]
        choices: list[tuple[float, Callable[[], Awaitable[str]]]] = [
            (3.0 if len(self.payments) < PAYMENTS_MAX else 0.0, self._buy),
            (1.0 if self.payments else 0.0, self._merchant_spends),
            (1.0 if self.payments else 0.0, self._cancel),
            (1.5 if self.payments else 0.0, self._refund),
            (0.7 if self.payments else 0.0, self._deadline_passes),
            (1.5 if self.payments else 0.0, self._review),
            (0.3, self._stock_arrives),
            (4.0, self._relay_someone),
            (10.0 if busy else 0.0, self._deliver_something),
        ]
        self.clock += STEP_TIME
        action = self.random.choices([action for _, action in choices], [weight for weight, _ in choices])[0]
        self.trace.append(await action())

    async def _pay(self, payer: str, merchant: str, sku: str) -> str:
        tier = self.random.choice((1, 2, 3))  # standard, priority, critical: each on its own lane
        request = PurchaseRequest(str(uuid.uuid4()), payer, merchant, sku, 1, PRICE_MINOR, CURRENCY, tier)
        review = self.random.random() < REVIEW_CHANCE
        async with self.databases["payments"].transaction() as unit:
            payment, _ = await payments_handlers.create_payment(unit, request, RULES, OPS, _screen(review))
        self.payments.append(payment.payment_id)
        held = " (held for review)" if review else ""
        return f"payment #{len(self.payments) - 1}: {payer[:4]} buys {sku} from {merchant[:4]} (tier {tier}){held}"

    async def _buy(self) -> str:
        return await self._pay(
            self.random.choice(self.wallets), self.random.choice(self.merchants), self.random.choice(SKUS)
        )

    async def _merchant_spends(self) -> str:
        """A merchant spends what it earned: it buys from the other merchant."""
        spender, seller = self.random.sample(self.merchants, 2)
        return "merchant spends: " + await self._pay(spender, seller, self.random.choice(SKUS))

    def _some_payment(self) -> tuple[int, str]:
        index = self.random.randrange(len(self.payments))
        return index, self.payments[index]

    async def _cancel(self) -> str:
        index, payment_id = self._some_payment()
        outcome = await self._command("payments", payments_handlers.cancel_payment, payment_id, "changed my mind", OPS)
        return f"cancel #{index}: {outcome}"

    async def _refund(self) -> str:
        index, payment_id = self._some_payment()
        outcome = await self._command("payments", payments_handlers.refund_payment, payment_id, "damaged", OPS)
        return f"refund #{index}: {outcome}"

    async def _deadline_passes(self) -> str:
        index, payment_id = self._some_payment()
        return f"deadline of #{index}: {await self._command('payments', _time_out, payment_id)}"

    async def _review(self) -> str:
        """Ops decide a review (most payments are not under review: refused)."""
        index, payment_id = self._some_payment()
        if self.random.random() < 0.6:
            outcome = await self._command("payments", payments_handlers.approve_payment, payment_id, "ok", OPS, RULES)
            return f"approve #{index}: {outcome}"
        outcome = await self._command("payments", payments_handlers.decline_payment, payment_id, "fraud", OPS)
        return f"decline #{index}: {outcome}"

    async def _stock_arrives(self) -> str:
        sku = self.random.choice(SKUS)
        await self._command("inventory", inventory_handlers.receive_stock, sku, 1, str(uuid.uuid4()), OPS)
        return f"1 {sku} received"

    async def _relay_someone(self) -> str:
        service = self.random.choice(sorted(self.databases))
        await self.relay(service)
        return f"relay {service}"

    async def _deliver_something(self) -> str:
        consumer = self._busy_consumer()
        await self.deliver(consumer)
        return f"deliver to {consumer[0]} from {consumer[1]} ({consumer[2]} lane)"

    def _busy_consumer(self) -> tuple[str, str, str]:
        """A consumer with events waiting; a compensation lane is likelier, as it is served first."""
        busy = [consumer for consumer, queue in self.pending.items() if queue]
        weights = [COMPENSATION_PREFERENCE if consumer[2] == lanes.COMPENSATION else 1.0 for consumer in busy]
        return self.random.choices(busy, weights)[0]

    # -- settling and the verdict ------------------------------------------------------------------

    async def settle(self) -> None:
        """Relay and deliver everything, in random order; a payment still in flight with nothing
        left to deliver has its deadline pass, as the sweeper would make it."""
        for _ in range(SETTLE_ROUNDS_MAX):
            unrelayed = sorted(service for service, waiting in self.unrelayed.items() if waiting)
            busy = [consumer for consumer, queue in self.pending.items() if queue]
            if unrelayed:
                await self.relay(self.random.choice(unrelayed))
            elif busy:
                await self.deliver(self._busy_consumer())
            elif stuck := await self._in_flight():
                await self._command("payments", _time_out, stuck[0])
                self.trace.append(f"settling: deadline of {stuck[0][:8]} passes")
            else:
                return
        self.parked.append(f"the world did not settle within {SETTLE_ROUNDS_MAX} rounds")

    async def _in_flight(self) -> list[str]:
        payments = payments_tables.metadata.tables["payments"]
        async with self.databases["payments"].read() as connection:
            query = sa.select(payments.c.payment_id).where(
                payments.c.status.in_(("UNDER_REVIEW", "PENDING", "FUNDS_HELD", "STOCK_RESERVED"))
            )
            in_flight = {str(row.payment_id) for row in await connection.execute(query)}
        return [payment_id for payment_id in self.payments if payment_id in in_flight]  # oldest first

    async def verdict(self) -> list[str]:
        """What is wrong once the world has settled: empty when every payment ended and the books agree."""
        report = await invariants.check(self.url("ledger"), self.url("inventory"), self.url("payments"))
        return [*self.parked, *report.violations, *await self.reconciliation()]

    async def reconciliation(self) -> list[str]:
        """The nightly reconciliation over the settled world's databases and streams: in a world
        that ended well, whatever it finds it should not have found."""
        window = Window(self.clock + dt.timedelta(hours=1))
        gathered = sources.Gathered(Observations(window))
        await sources.read_databases(gathered, {service: self.url(service) for service in sources.SERVICES})
        facts = [
            sources.event_fact(f"{producer.upper()}_EVENTS", sequence, envelope.SerializeToString())
            for producer, envelopes in self.streams.items()
            for sequence, envelope in enumerate(envelopes, 1)
        ]
        gathered.observed.events = [fact for fact in facts if fact is not None]
        await sources.other_payments(gathered, self.url("payments"))
        if gathered.incomplete:
            return [f"reconciliation incomplete: {reason}" for reason in gathered.incomplete]
        mismatches, _ = reconcile(gathered.observed)
        return [f"reconciliation: {m.kind} on {m.payment_id}: {m.detail}" for m in mismatches]


async def _time_out(unit: PaymentsUnit, payment_id: str) -> None:
    """The deadline passes (the world's clock moves 10 ms a step, not the 30 s of a deadline)."""
    await payments_handlers.time_out(unit, payment_id, RULES, force=True)


def _screen(review: bool) -> Callable[[PurchaseRequest, int, dt.datetime], Decision]:
    """The simulator's rules: a review, or nothing to say."""
    hits = _REVIEW if review else ()
    return lambda _request, _velocity, _now: decide("simulator", hits, ScoreThresholds())


async def run(seed: int, directory: Path, code: Mapping[str, ServiceCode] = CURRENT_CODE) -> World:
    """One seed's world, run to its verdict (the trace's last line)."""
    world = World(seed, directory, code)
    await world.open()
    try:
        # Two acts: purchases under way, then, once some have completed, refunds and merchants
        # spending what they earned (the order the refund bug needs) with new purchases meanwhile.
        for _ in range(2):
            for _ in range(STEPS):
                await world.step()
            await world.settle()
        world.problems = await world.verdict()
        world.trace.append(f"verdict: {world.problems or 'ok'}")
    finally:
        await world.close()
    return world
