"""The saga's messaging alone, as a raw limit: how many purchase sagas per second this machine
moves through JetStream when the services do nothing but receive, publish and ack. No database,
no business logic, no gRPC: the transport ceiling of the architecture, against which the real
sagas show how far they are from what their messaging pattern allows.

Per saga, as the real system: 5 publishes (each with a unique Nats-Msg-Id, acknowledged by
JetStream after fsync) into one stream per producer, and 8 deliveries: 7 to the services' durable
pull consumers (explicit acks), 1 to the generator. Each role (bench.skeleton_worker) is a process
of its own on uvloop with mTLS, and consumes as paysaga.runtime.messaging.consumer does (batches of up to 64)
and publishes as paysaga.runtime.messaging.relay does (a batch's follow-ups at once, their acks awaited together);
it acks what it consumed only once its follow-ups are stored. The nats-server is the raw limits'
own (bench.limits.nats_server): TLS with client certificates, file storage, ``sync_interval:
always``.

The generator plays the client and, in its place, the payments service's first step: it keeps
in_flight sagas going (closed loop), each started by publishing PaymentRequested on payments'
behalf and ended when it sees that saga's PaymentCompleted on a core NATS subscription (the
cheapest way to observe it: no consumer state, no acks).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bench import limits
from bench.procstats import Usage
from bench.skeleton_worker import (
    PRODUCERS,
    ROLES,
    SUBJECT_ROOT,
    message_id,
    payload,
    saga_id_of,
    stream_name,
    subject,
)
from bench.stats import Latency
from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.relay import PUBLISH_TIMEOUT_S

T = TypeVar("T")
NAME = "saga messaging skeleton"
# The same without atomic batches, when the run's rule has them (paysaga.runtime.messaging.batches).
SINGLE_PUBLISHES_NAME = "saga messaging skeleton, single publishes"
WARMUP_S = 1.0
# A skeleton saga takes milliseconds; one that takes this long is lost, and the figure would be wrong.
SAGA_TIMEOUT_S = 10.0
STARTED = "PaymentRequested"
COMPLETED = "PaymentCompleted"


@dataclass(frozen=True)
class Window:
    """The measured span of perf_counter() time, after the warm-up."""

    start_s: float
    end_s: float

    @classmethod
    def after(cls, warmup_s: float, duration_s: float) -> Window:
        start_s = time.perf_counter() + warmup_s
        return cls(start_s, start_s + duration_s)

    def holds(self, moment_s: float) -> bool:
        return self.start_s <= moment_s < self.end_s


@dataclass(frozen=True)
class Saga:
    started_s: float
    completed_s: float


class Generator:
    """Starts sagas and learns when each has completed."""

    def __init__(self, client: NatsClient, jetstream: JetStreamContext) -> None:
        self._client = client
        self._jetstream = jetstream
        self._waiting: dict[str, asyncio.Future[float]] = {}

    async def observe(self) -> None:
        # Subscribed on the connection that then publishes: the server has it before the first saga starts.
        await self._client.subscribe(subject("payments", COMPLETED), cb=self._completed)

    async def _completed(self, message: Msg) -> None:
        waiting = self._waiting.pop(saga_id_of(message.data), None)
        if waiting is not None and not waiting.done():
            waiting.set_result(time.perf_counter())

    async def saga(self) -> Saga:
        saga_id = uuid.uuid4().hex
        completed: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[saga_id] = completed  # first: it may complete before the publish's ack is back
        started_s = time.perf_counter()
        try:
            await self._jetstream.publish(
                subject("payments", STARTED),
                payload(saga_id),
                headers={"Nats-Msg-Id": message_id(saga_id, STARTED)},
                timeout=PUBLISH_TIMEOUT_S,
            )
            try:
                completed_s = await asyncio.wait_for(completed, SAGA_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(f"a skeleton saga did not complete within {SAGA_TIMEOUT_S:g} s") from None
        finally:
            self._waiting.pop(saga_id, None)
        return Saga(started_s, completed_s)

    async def closed_loop(self, in_flight: int, window: Window) -> list[Saga]:
        """in_flight sagas at all times until the window ends; every saga started is awaited (each
        has its timeout). The first failure stops them all."""
        sagas: list[Saga] = []

        async def client() -> None:
            while time.perf_counter() < window.end_s:
                sagas.append(await self.saga())

        clients = [asyncio.create_task(client()) for _ in range(in_flight)]
        try:
            done, _ = await asyncio.wait(clients, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises the failure, if any
        finally:
            await _cancel(clients)
        return sagas


async def cpu_percent(pids: Mapping[str, int], window: Window) -> dict[str, float]:
    """Share of one CPU each process used over the window (100 = one core busy)."""
    usage = Usage.of(dict(pids))
    await asyncio.sleep(max(0.0, window.start_s - time.perf_counter()))
    usage.start()
    began_s = time.perf_counter()
    await asyncio.sleep(max(0.0, window.end_s - began_s))
    usage.stop()
    elapsed_s = time.perf_counter() - began_s
    return {name: round(100 * process.cpu_s / elapsed_s, 1) for name, process in usage.processes.items()}


async def saga_messaging(
    certs_dir: Path, work_dir: Path, *, in_flight: int, duration_s: float, atomic_batch_min: int, name: str = NAME
) -> limits.RawLimit:
    """Skeleton sagas completed per second over duration_s, after WARMUP_S, with in_flight going,
    the workers publishing atomic batches as the relay does at atomic_batch_min (0: never)."""
    try:
        async with limits.nats_server(certs_dir, work_dir) as server:
            client = await limits.connect(server, certs_dir, name="bench-skeleton")
            try:
                await _create_streams(client.jetstream())
                async with _workers(server, certs_dir, atomic_batch_min) as workers:
                    generator = Generator(client, client.jetstream())
                    await generator.observe()
                    window = Window.after(WARMUP_S, duration_s)
                    pids = {"nats": server.pid, "bench": os.getpid()}
                    pids |= {role: child.process.pid for role, child in workers.items()}
                    sagas, cpu = await _unless_a_worker_exits(_load(generator, in_flight, window, pids), workers)
            finally:
                await client.close()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # its streams: nothing to keep
    measured = [saga for saga in sagas if window.holds(saga.completed_s)]
    latency = Latency.of([saga.completed_s - saga.started_s for saga in measured])
    return limits.RawLimit(name, in_flight, len(measured), duration_s, latency, cpu_percent=cpu)


async def _create_streams(jetstream: JetStreamContext) -> None:
    """One per producer, configured as the real ones; before the workers start, as their consumers need them."""
    for producer in PRODUCERS:
        spec = streams.StreamSpec(stream_name(producer), (f"{SUBJECT_ROOT}.{producer}.>",), "skeleton events")
        await streams.ensure_stream(jetstream, spec, replicas=1)


@contextlib.asynccontextmanager
async def _workers(
    server: limits.NatsServer, certs_dir: Path, atomic_batch_min: int
) -> AsyncIterator[dict[str, limits.Child]]:
    """A process per role, each ready (its consumers created); all stopped when the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        workers: dict[str, limits.Child] = {}
        for role in ROLES:
            command = [sys.executable, "-m", "bench.skeleton_worker", "--role", role]
            command += [
                "--nats",
                server.url,
                "--certs-dir",
                str(certs_dir),
                "--atomic-batch-min",
                str(atomic_batch_min),
            ]
            workers[role] = await stack.enter_async_context(limits.running(command, "ready"))
        yield workers


async def _load(
    generator: Generator, in_flight: int, window: Window, pids: Mapping[str, int]
) -> tuple[list[Saga], dict[str, float]]:
    cpu = asyncio.create_task(cpu_percent(pids, window))
    try:
        sagas = await generator.closed_loop(in_flight, window)
        # It ended with the window, before the last sagas did.
        return sagas, await asyncio.wait_for(cpu, timeout=limits.STOP_TIMEOUT_S)
    finally:
        await _cancel([cpu])


async def _unless_a_worker_exits(work: Awaitable[T], workers: Mapping[str, limits.Child]) -> T:
    """work's result; if a worker process ends first, that failure at once rather than the sagas'
    timeout later."""
    task = asyncio.ensure_future(work)
    exits: dict[asyncio.Future[Any], str] = {
        asyncio.ensure_future(child.process.wait()): role for role, child in workers.items()
    }
    try:
        done, _ = await asyncio.wait([task, *exits], return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        role = next(exits[ended] for ended in done if ended in exits)
        raise RuntimeError(f"the skeleton's {role} worker {workers[role].describe()}")
    finally:
        await _cancel([task, *exits])


async def _cancel(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Cancel those still running, and wait (a bounded time) until they have stopped."""
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=limits.STOP_TIMEOUT_S)
