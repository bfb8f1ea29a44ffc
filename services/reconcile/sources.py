"""Reading the sources of a run: each service's database (read-only, one snapshot each), each
service's event stream and dead-letter stream, and the settlement file; and checking that each
covers the window. A source that cannot be read, or does not reach back far enough, makes the
run incomplete: it is named, and nothing is judged.

Streams are read through a pull consumer named "reconcile" (unacknowledged, in memory, deleted
after the read and removed by the server if a run dies), from a little before the look-back's
start up to what the stream held when its reading began; events from the window's end on are
left out, so a rerun over the same data reads the same events. A read that stops short makes the
run incomplete; one that JetStream refuses as unavailable (503, while a clustered stream elects
its leader) before it took anything is tried again for a while first.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core import eventing
from paysaga.core.reconciliation import OutboxBacklog
from paysaga.runtime.messaging import streams
from paysaga.runtime.storage import read_only
from paysaga.runtime.storage.backends import DatabaseMissing
from services.inventory.adapters import records as inventory_records
from services.ledger.adapters import records as ledger_records
from services.payments.adapters import records as payments_records
from services.reconcile import settlement
from services.reconcile.observations import PURCHASE_EVENTS, DeadLetter, EventFact, Observations
from services.reconcile.report import SourceState

log = logging.getLogger(__name__)

SERVICES = ("payments", "ledger", "inventory")
# Events carry their producer's clock; the stream its own: read from a little earlier.
CLOCK_SLACK = dt.timedelta(minutes=10)
NEXT_TIMEOUT_S = 10.0
FETCH_BATCH = 1000
# The one consumer the reconciliation may create on a stream (its NATS permissions name it), so it
# can never touch a service's consumers; the server removes it if a run dies while reading.
CONSUMER = "reconcile"
CONSUMER_INACTIVE_S = 60.0
STREAM_INFO_TIMEOUT_S = 10.0
STREAM_NOT_FOUND = 10059
# JetStream answers 503 while a clustered stream or the meta group elects a leader (after a node
# was lost or came back): a read refused that way, before it took anything, is tried again for
# up to UNAVAILABLE_RETRY_S before the stream counts as unavailable.
UNAVAILABLE_RETRY_S = 30.0
UNAVAILABLE_PAUSE_S = 1.0
_TRANSIENT = (ServiceUnavailableError, nats.errors.NoRespondersError)
DATABASE_TIMEOUT_S = 600.0
# Why a database could not be read: missing, a bad URL or driver, unreachable, too slow.
UNREADABLE = (DatabaseMissing, ValueError, ImportError, SQLAlchemyError, OSError, TimeoutError)


@dataclass
class Gathered:
    observed: Observations
    sources: list[SourceState] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def ok(self, name: str, kind: str, records: int, detail: str) -> None:
        self.sources.append(SourceState(name, kind, "ok", records, detail))

    def failed(self, name: str, kind: str, status: str, reason: str) -> None:
        self.sources.append(SourceState(name, kind, status, 0, reason))
        self.incomplete.append(f"{name}: {reason}")


async def read_databases(gathered: Gathered, urls: dict[str, str]) -> None:
    """Each service's records, each database in one read-only snapshot."""
    window = gathered.observed.window
    since, until = window.lookback_start, window.end
    backlog_before = window.end - window.settle

    async def payments(connection: AsyncConnection) -> tuple[int, str, OutboxBacklog]:
        gathered.observed.payments = await payments_records.created_between(connection, since, until)
        return (
            len(gathered.observed.payments),
            f"{len(gathered.observed.payments)} payments",
            await payments_records.backlog(connection, backlog_before),
        )

    async def ledger(connection: AsyncConnection) -> tuple[int, str, OutboxBacklog]:
        holds = await ledger_records.holds_updated_since(connection, since - CLOCK_SLACK)
        entries = await ledger_records.entries_between(connection, since, until)
        gathered.observed.holds, gathered.observed.entries = holds, entries
        # Counted up to the end: what changed since is the next run's, and a rerun counts the same.
        counted = sum(hold.updated_at < until for hold in holds)
        detail = f"{counted} holds, {len(entries)} journal entries"
        return counted + len(entries), detail, await ledger_records.backlog(connection, backlog_before)

    async def inventory(connection: AsyncConnection) -> tuple[int, str, OutboxBacklog]:
        found = await inventory_records.reservations_updated_since(connection, since - CLOCK_SLACK)
        gathered.observed.reservations = found
        counted = sum(reservation.updated_at < until for reservation in found)
        return counted, f"{counted} reservations", await inventory_records.backlog(connection, backlog_before)

    readers: dict[str, Callable[[AsyncConnection], Awaitable[tuple[int, str, OutboxBacklog]]]] = {
        "payments": payments,
        "ledger": ledger,
        "inventory": inventory,
    }
    for service in SERVICES:
        name = f"{service} database"
        try:
            async with read_only.reading(urls[service]) as connection:
                count, detail, backlog = await asyncio.wait_for(readers[service](connection), DATABASE_TIMEOUT_S)
        except UNREADABLE as error:
            gathered.failed(name, "database", "unavailable", _first_line(error))
            continue
        if backlog.count:
            gathered.failed(
                name,
                "database",
                "incomplete",
                f"{backlog.count} events written since {backlog.oldest_at:%Y-%m-%d %H:%M:%S} UTC are not yet in its "
                "stream (is its outbox relay running?)",
            )
            continue
        gathered.ok(name, "database", count, detail)


async def other_payments(gathered: Gathered, payments_url: str) -> None:
    """The payments that records or events in range name, beyond those payments' records in range
    hold: one created before the look-back (a refund today of last week's purchase) is judged on
    what happened in range; one created from the window's end on is the next run's."""
    observed = gathered.observed
    known = {payment.payment_id for payment in observed.payments}
    named = {event.saga_id for event in observed.events if event.event_type in PURCHASE_EVENTS}
    named |= {hold.payment_id for hold in observed.holds}
    named |= {reservation.payment_id for reservation in observed.reservations}
    named |= {entry.saga_id for entry in observed.entries if entry.saga_id}
    unknown = named - known - {""}
    if not unknown or gathered.incomplete:
        return
    try:
        async with read_only.reading(payments_url) as connection:
            found = await payments_records.by_ids(connection, unknown)
    except UNREADABLE as error:
        gathered.failed("payments database", "database", "unavailable", _first_line(error))
        return
    end = observed.window.end
    observed.out_of_range = frozenset(record.payment_id for record in found if record.created_at >= end)
    observed.payments = [*observed.payments, *(record for record in found if record.created_at < end)]


async def read_streams(gathered: Gathered, client: NatsClient) -> None:
    window = gathered.observed.window
    events: list[EventFact] = []
    letters: list[DeadLetter] = []
    for service in SERVICES:
        events_spec, letters_spec = streams.owned_streams(service)

        def take_event(message: Msg, stream: str = events_spec.name) -> None:
            fact = event_fact(stream, message.metadata.sequence.stream, message.data)
            if fact is not None and fact.at < window.end:
                events.append(fact)

        def take_letter(message: Msg, stream: str = letters_spec.name) -> None:
            letters.append(dead_letter(stream, message))

        before = len(events)
        start = window.lookback_start - CLOCK_SLACK
        reason = await retried_while_unavailable(
            functools.partial(
                read_stream, client, events_spec.name, events_spec.subjects[0], start, take_event, covers=start
            )
        )
        if reason:
            gathered.failed(f"{events_spec.name} stream", "stream", "unavailable", reason)
        else:
            read = events[before:]
            span = f", sequences {read[0].sequence}-{read[-1].sequence}" if read else ""
            gathered.ok(f"{events_spec.name} stream", "stream", len(read), f"{len(read)} events in range{span}")
        before = len(letters)
        reason = await retried_while_unavailable(
            functools.partial(
                read_stream, client, letters_spec.name, letters_spec.subjects[0], None, take_letter, covers=None
            )
        )
        if reason:
            gathered.failed(f"{letters_spec.name} stream", "dead_letters", "unavailable", reason)
        else:
            gathered.ok(
                f"{letters_spec.name} stream", "dead_letters", len(letters) - before, f"{len(letters) - before} parked"
            )
    gathered.observed.events = events
    gathered.observed.dead_letters = letters


class Unavailable(str):
    """Why a read failed, when it failed for a while only (JetStream's 503) and took nothing."""


async def retried_while_unavailable(read: Callable[[], Awaitable[str | None]]) -> str | None:
    """read() (a read_stream), tried again while it fails as Unavailable, for up to
    UNAVAILABLE_RETRY_S; what the last try said."""
    deadline_s = time.monotonic() + UNAVAILABLE_RETRY_S
    while True:
        reason = await read()
        if not isinstance(reason, Unavailable) or time.monotonic() >= deadline_s:
            return reason
        log.warning("reconcile.stream_unavailable", extra={"reason": str(reason)})
        await asyncio.sleep(UNAVAILABLE_PAUSE_S)


async def read_stream(
    client: NatsClient,
    stream: str,
    subject: str,
    start: dt.datetime | None,
    take: Callable[[Msg], None],
    *,
    covers: dt.datetime | None,
) -> str | None:
    """Read stream from start (None: its first message) up to its last message now; the reason it
    could not, or None. A read that stops short is a reason, never a partial success; one refused
    as unavailable before it took anything says so (Unavailable), so that it can be tried again."""
    try:
        state = await stream_state(client, stream)
    except NotFoundError:
        return "the stream does not exist (has the service ever started?)"
    except _TRANSIENT as error:
        return Unavailable(f"cannot read the stream's state: {error!r}")
    except (nats.errors.Error, TimeoutError, ValueError) as error:
        return f"cannot read the stream's state: {error!r}"
    if covers is not None and state.first_sequence > 1 and state.messages and state.first_at > covers:
        return (
            f"its oldest event is from {state.first_at:%Y-%m-%d %H:%M:%S} UTC, after the look-back's start "
            f"{covers:%Y-%m-%d %H:%M:%S} UTC: older events are gone"
        )
    if not state.messages:
        return None
    jetstream = client.jetstream()
    try:
        await jetstream.consumer_info(stream, CONSUMER)
        return (
            f"another reconciliation is reading it (its consumer {CONSUMER!r} exists; the server removes an idle one)"
        )
    except NotFoundError:
        pass
    except _TRANSIENT as error:
        return Unavailable(f"cannot read the stream: {error!r}")
    except (nats.errors.Error, TimeoutError) as error:
        return f"cannot read the stream: {error!r}"
    config = ConsumerConfig(
        name=CONSUMER,
        filter_subject=subject,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=CONSUMER_INACTIVE_S,
        mem_storage=True,
        **(
            {"deliver_policy": DeliverPolicy.ALL}
            if start is None
            else {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": start}
        ),
    )
    read = 0
    try:
        created = await jetstream.add_consumer(stream, config)
        try:
            # What is stored from start on now: the run's cut of this stream.
            wanted = created.num_pending or 0
            subscription = await jetstream.pull_subscribe_bind(CONSUMER, stream=stream)
            try:
                while read < wanted:
                    for message in await subscription.fetch(min(wanted - read, FETCH_BATCH), timeout=NEXT_TIMEOUT_S):
                        read += 1
                        take(message)
            finally:
                await subscription.unsubscribe()
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await jetstream.delete_consumer(stream, CONSUMER)
    except _TRANSIENT as error:
        if read:
            return f"reading stopped after {read} messages: {error!r}"
        # Perhaps created before the refusal: ours (it did not exist a moment ago), so it goes.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await jetstream.delete_consumer(stream, CONSUMER)
        return Unavailable(f"reading stopped after 0 messages: {error!r}")
    except (nats.errors.Error, TimeoutError) as error:
        return f"reading stopped after {read} messages: {error!r}"
    return None


@dataclass(frozen=True)
class StreamState:
    messages: int
    first_sequence: int
    last_sequence: int
    # When the stream's oldest message was stored.
    first_at: dt.datetime


async def stream_state(client: NatsClient, stream: str) -> StreamState:
    """The stream's state as the server reports it, with its oldest message's time (which nats-py's
    StreamInfo leaves out): a raw $JS.API.STREAM.INFO request."""
    reply = await client.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=STREAM_INFO_TIMEOUT_S)
    answer = json.loads(reply.data)
    error = answer.get("error")
    if error is not None:
        if error.get("err_code") == STREAM_NOT_FOUND:
            raise NotFoundError
        if error.get("code") == 503:
            raise ServiceUnavailableError(code=503, description=error.get("description"))
        raise ValueError(error.get("description", "unknown error"))
    state = answer["state"]
    return StreamState(state["messages"], state["first_seq"], state["last_seq"], parse_time(state["first_ts"]))


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 time as NATS writes it (nanoseconds, Z), to the microsecond."""
    head, _, fraction = text.rstrip("Z").partition(".")
    moment = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    return moment + dt.timedelta(microseconds=int((fraction + "000000")[:6]))


def event_fact(stream: str, sequence: int, data: bytes) -> EventFact | None:
    """What a stored event of a purchase says; None for any other message."""
    try:
        envelope = eventing.parse(data)
    except ValueError:
        return None  # not ours to judge here: consumers park what they cannot read
    if envelope.event_type not in PURCHASE_EVENTS:
        return None
    payload = eventing.payload_of(envelope)
    has = payload.DESCRIPTOR.fields_by_name
    amount = getattr(payload, "amount", None) if "amount" in has else None
    return EventFact(
        stream,
        sequence,
        envelope.event_id,
        envelope.event_type,
        envelope.producer,
        envelope.saga_id,
        envelope.occurred_at.ToDatetime(dt.UTC),
        amount_minor=None if amount is None else amount.amount_minor,
        currency="" if amount is None else amount.currency,
        sku=str(getattr(payload, "sku", "")),
        quantity=int(getattr(payload, "quantity")) if "quantity" in has else None,  # noqa: B009
        hold_id=str(getattr(payload, "hold_id", "")),
    )


def dead_letter(stream: str, message: Msg) -> DeadLetter:
    headers = message.headers or {}
    saga_id, event_type = "", message.subject.rsplit(".", 1)[-1]
    try:
        envelope = eventing.parse(message.data)
        saga_id, event_type = envelope.saga_id, envelope.event_type
    except ValueError:
        pass
    return DeadLetter(
        stream,
        message.metadata.sequence.stream,
        message.subject,
        message.metadata.timestamp.astimezone(dt.UTC),
        headers.get("Paysaga-Reason", ""),
        saga_id,
        event_type,
    )


def read_settlement(gathered: Gathered, path: Path | None) -> None:
    if path is None:
        gathered.sources.append(SourceState("settlement file", "settlement", "not_given", 0, "none given"))
        return
    try:
        lines = settlement.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, settlement.SettlementFileError) as error:
        gathered.failed(f"settlement file {path.name}", "settlement", "unavailable", str(error))
        return
    gathered.observed.settlement = lines
    gathered.ok(f"settlement file {path.name}", "settlement", len(lines), f"{len(lines)} lines")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [repr(error)])[0]
