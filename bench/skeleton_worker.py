"""One service of the saga messaging skeleton (see bench.skeleton): it only receives, publishes
and acks, with the messaging pattern of the real service and nothing else: no database, no
business logic, no gRPC.

``python -m bench.skeleton_worker --role ledger --nats tls://127.0.0.1:PORT --certs-dir DIR
[--atomic-batch-min N]``
connects over mTLS with the role's certificate, creates its durable consumers, writes ``ready``
on stdout and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.batches import Outgoing, publish_all
from paysaga.runtime.messaging.consumer import FETCH_BATCH, FETCH_TIMEOUT_S, consumer_config
from paysaga.runtime.messaging.pulls import Puller
from paysaga.runtime.messaging.relay import PUBLISH_TIMEOUT_S
from paysaga.runtime.messaging.windows import ATOMIC_BATCH_MIN
from paysaga.runtime.service_process import run_on_fast_loop
from paysaga.runtime.settings import TlsFiles

log = logging.getLogger("bench.skeleton")

SUBJECT_ROOT = "skeleton.events"
PRODUCERS = ("payments", "ledger", "inventory")
CONNECT_TIMEOUT_S = 20.0
# As large as the publish limit's events, about the size of a real event envelope.
PAYLOAD_BYTES = 300
SAGA_ID_CHARS = 32  # uuid4().hex


@dataclass(frozen=True)
class Feed:
    """The events of one producer that a role consumes (one durable consumer, as the real services
    have one per producer), each mapped to the event the role publishes in reply, or None when it
    only acks it."""

    producer: str
    reactions: Mapping[str, str | None]

    def durable_name(self, role: str) -> str:
        return f"{role}-from-{self.producer}"


# The purchase saga's happy path: 5 publishes, 7 deliveries to services (plus the generator's
# observer of PaymentCompleted). The generator publishes PaymentRequested on payments' behalf.
ROLES: dict[str, tuple[Feed, ...]] = {
    "ledger": (
        Feed("payments", {"PaymentRequested": "FundsHeld"}),
        Feed("inventory", {"StockReserved": "FundsCaptured"}),
    ),
    "inventory": (Feed("ledger", {"FundsHeld": "StockReserved", "FundsCaptured": None}),),
    "payments": (
        Feed("ledger", {"FundsHeld": None, "FundsCaptured": "PaymentCompleted"}),
        Feed("inventory", {"StockReserved": None}),
    ),
}


def stream_name(producer: str) -> str:
    return f"SKELETON_{producer.upper()}_EVENTS"


def subject(producer: str, event_type: str) -> str:
    return f"{SUBJECT_ROOT}.{producer}.{event_type}"


def payload(saga_id: str) -> bytes:
    return saga_id.encode().ljust(PAYLOAD_BYTES, b".")


def saga_id_of(data: bytes) -> str:
    return data[:SAGA_ID_CHARS].decode()


def message_id(saga_id: str, event_type: str) -> str:
    """Unique per event, and the same if it is published again: JetStream drops the duplicate."""
    return f"{saga_id}:{event_type}"


async def subscribe(jetstream: JetStreamContext, role: str, feed: Feed) -> Puller:
    """The role's durable pull consumer of feed, configured and read as
    paysaga.runtime.messaging.consumer's."""
    durable = feed.durable_name(role)
    config = consumer_config(durable, [subject(feed.producer, event_type) for event_type in feed.reactions])
    await jetstream.add_consumer(stream_name(feed.producer), config)
    puller = Puller(jetstream, stream_name(feed.producer), durable, FETCH_BATCH)
    await puller.open()
    return puller


async def consume(
    jetstream: JetStreamContext,
    role: str,
    feed: Feed,
    puller: Puller,
    atomic_batch_min: int,
) -> None:
    """Take and react, batch after batch, until cancelled."""
    while True:
        messages = await puller.next_batch(FETCH_TIMEOUT_S)
        if messages:
            await react(jetstream, role, feed, messages, atomic_batch_min)


async def react(
    jetstream: JetStreamContext, role: str, feed: Feed, messages: Sequence[Msg], atomic_batch_min: int
) -> None:
    """Publish the batch's follow-up events as the outbox relay does (at once, a large batch as one
    atomic batch: paysaga.runtime.messaging.batches), then ack each consumed message whose
    follow-up is stored; the others are nak'ed, so they come back."""
    follow_ups = [(message, _follow_up(role, feed, message)) for message in messages]
    outgoing = [follow_up for _, follow_up in follow_ups if follow_up is not None]
    results = iter(await publish_all(jetstream, outgoing, PUBLISH_TIMEOUT_S, atomic_batch_min=atomic_batch_min))
    for message, follow_up in follow_ups:
        error = next(results) if follow_up is not None else None
        if error is not None:
            log.warning("skeleton.publish_failed: %r", error)
            await message.nak()
        else:
            await message.ack()


def _follow_up(role: str, feed: Feed, message: Msg) -> Outgoing | None:
    emits = feed.reactions[message.subject.rsplit(".", 1)[-1]]
    if emits is None:
        return None
    saga_id = saga_id_of(message.data)
    # The saga id and the padding: the skeleton's events carry nothing else.
    return Outgoing(subject(role, emits), message.data, message_id(saga_id, emits))


async def serve(role: str, nats_url: str, files: TlsFiles, atomic_batch_min: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = await streams.connect(nats_url, files, name=f"skeleton-{role}", timeout_s=CONNECT_TIMEOUT_S)
    try:
        jetstream = client.jetstream()
        feeds = [(feed, await subscribe(jetstream, role, feed)) for feed in ROLES[role]]
        print("ready", flush=True)
        consumers = [asyncio.create_task(consume(jetstream, role, feed, sub, atomic_batch_min)) for feed, sub in feeds]
        stopped = asyncio.create_task(stop.wait())
        # Until told to stop, or a consumer fails (then its traceback tells the benchmark why).
        await asyncio.wait([stopped, *consumers], return_when=asyncio.FIRST_COMPLETED)
        for task in [stopped, *consumers]:
            task.cancel()
        for consumer in consumers:
            with contextlib.suppress(asyncio.CancelledError):
                await consumer  # re-raises a consumer's failure
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=sorted(ROLES), required=True)
    parser.add_argument(
        "--atomic-batch-min",
        type=int,
        default=ATOMIC_BATCH_MIN,
        help="publish this many follow-ups or more as one atomic batch, as the relay does "
        f"(default {ATOMIC_BATCH_MIN}; 0: never)",
    )
    parser.add_argument("--nats", required=True, help="the nats-server's URL, tls://host:port")
    parser.add_argument("--certs-dir", type=Path, required=True, help="holds <role>.crt, <role>.key and ca.crt")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("nats", "asyncio"):  # reconnect chatter and TLS close warnings, as in the benchmark
        logging.getLogger(noisy).setLevel(logging.ERROR)
    files = TlsFiles.in_directory(arguments.certs_dir, arguments.role)
    run_on_fast_loop(serve(arguments.role, arguments.nats, files, arguments.atomic_batch_min))


if __name__ == "__main__":
    main()
