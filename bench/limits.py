"""The raw limits of this machine, measured in the same run as the sagas: an mTLS echo RPC
(grpc.aio server and client, each in its own process, as between a client and a service) and a
JetStream publish acknowledged after fsync (a nats-server of its own, TLS, ``sync_interval:
always``, as the cluster's). Saga rates are reported as ratios of these, which survive a noisy or
different machine far better than absolute numbers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NatsClient

from bench.echo_server import METHOD
from bench.stats import Latency
from paysaga.ops.cluster.localcluster import find_nats_server, free_port
from paysaga.runtime.messaging import streams
from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles

READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# The last lines a process wrote after its ready line, kept to explain its failure.
OUTPUT_TAIL_LINES = 20
ECHO_RPC = "mTLS echo RPC"
JETSTREAM_PUBLISH = "JetStream publish+ack (fsync)"
ECHO_PAYLOAD = b"x" * 200
EVENT_PAYLOAD = b"x" * 300
RAW_STREAM = "BENCH_RAW"


@dataclass(frozen=True)
class RawLimit:
    name: str
    concurrency: int
    operations: int
    duration_s: float
    latency: Latency
    # Share of one CPU each process used over the measured window (100 = one core), where measured.
    cpu_percent: Mapping[str, float] = field(default_factory=dict)

    @property
    def rate_per_s(self) -> float:
        return self.operations / self.duration_s if self.duration_s else 0.0


async def closed_loop(
    operation: Callable[[], Awaitable[object]], concurrency: int, duration_s: float
) -> tuple[int, float, list[float]]:
    """Run operation from concurrency workers for duration_s: (operations done, seconds, latencies)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while (started := time.perf_counter()) < deadline:
            await operation()
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - began, latencies


@dataclass
class Child:
    """A process started by running(), and the last lines it wrote after its ready line."""

    process: asyncio.subprocess.Process
    output_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=OUTPUT_TAIL_LINES))

    def describe(self) -> str:
        code = self.process.returncode
        status = "still running" if code is None else f"exited with {code}"
        output = "\n".join(self.output_tail)
        return status + (f", its last output:\n{output}" if output else "")


@contextlib.asynccontextmanager
async def running(command: list[str], ready_line: str | None = None) -> AsyncIterator[Child]:
    """Run command until the block ends, then terminate it (kill it if it lingers). With
    ready_line, first wait until the process writes that line on stdout, as its first."""
    # Only a process we wait for reports on stdout; others must never block on a full pipe.
    output = asyncio.subprocess.PIPE if ready_line is not None else asyncio.subprocess.DEVNULL
    child = Child(await asyncio.create_subprocess_exec(*command, stdout=output, stderr=asyncio.subprocess.STDOUT))
    reader: asyncio.Task[None] | None = None
    try:
        if ready_line is not None:
            assert child.process.stdout is not None
            await _wait_ready(child, child.process.stdout, ready_line, " ".join(command[:3]))
            # Read on until it exits: a pipe nobody reads would block the process once full.
            reader = asyncio.create_task(_read_output(child.process.stdout, child.output_tail))
        yield child
    finally:
        await _stop(child.process)
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _wait_ready(child: Child, stdout: asyncio.StreamReader, ready_line: str, what: str) -> None:
    """Until the process writes ready_line. Lines before it are kept: a warning, or the traceback
    that says why it never got ready."""

    async def ready() -> bool:
        while line := await stdout.readline():
            text = line.decode(errors="replace").rstrip()
            if text == ready_line:
                return True
            child.output_tail.append(text)
        return False  # it closed its output: it is exiting

    try:
        found = await asyncio.wait_for(ready(), READY_TIMEOUT_S)
    except TimeoutError:
        raise RuntimeError(f"{what} was not ready within {READY_TIMEOUT_S:g} s: {child.describe()}") from None
    if not found:
        await _wait_stopped(child.process, timeout_s=1.0)
        raise RuntimeError(f"{what} did not start: {child.describe()}")


async def _read_output(stream: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    while line := await stream.readline():
        tail.append(line.decode(errors="replace").rstrip())


async def _wait_stopped(child: asyncio.subprocess.Process, *, timeout_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(child.wait(), timeout=timeout_s)
    return child.returncode is not None


async def _stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.terminate()
        if not await _wait_stopped(child, timeout_s=STOP_TIMEOUT_S):
            child.kill()
            await child.wait()


async def echo_rpc(certs_dir: Path, *, concurrency: int, duration_s: float) -> RawLimit:
    """Unary RPCs per second between two processes over mutual TLS, the request echoed back."""
    server_files = TlsFiles.in_directory(certs_dir, "payments")
    target = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "bench.echo_server", "--bind", target]
    command += ["--cert", str(server_files.cert_file), "--key", str(server_files.key_file)]
    command += ["--ca", str(server_files.ca_file)]
    async with (
        running(command, "ready"),
        tls.secure_channel(target, TlsFiles.in_directory(certs_dir, "ops")) as channel,
    ):
        echo = channel.unary_unary(METHOD)
        await echo(ECHO_PAYLOAD, timeout=10, wait_for_ready=True)
        count, elapsed_s, latencies = await closed_loop(lambda: echo(ECHO_PAYLOAD, timeout=10), concurrency, duration_s)
    return RawLimit(ECHO_RPC, concurrency, count, elapsed_s, Latency.of(latencies))


@dataclass(frozen=True)
class NatsServer:
    url: str
    pid: int


@contextlib.asynccontextmanager
async def nats_server(certs_dir: Path, work_dir: Path) -> AsyncIterator[NatsServer]:
    """A nats-server of its own, configured as the cluster's where it matters for speed: TLS with
    client certificates required, file storage fsynced before every acknowledgement. Clients
    connect with streams.connect, which retries until it is up."""
    port = free_port()
    config = _write_nats_config(work_dir, port, TlsFiles.in_directory(certs_dir, "nats"))
    async with running([find_nats_server(), "-c", str(config)]) as server:
        yield NatsServer(f"tls://127.0.0.1:{port}", server.process.pid)


async def connect(server: NatsServer, certs_dir: Path, *, name: str) -> NatsClient:
    return await streams.connect(
        server.url, TlsFiles.in_directory(certs_dir, "ops"), name=name, timeout_s=READY_TIMEOUT_S
    )


def _write_nats_config(work_dir: Path, port: int, files: TlsFiles) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "nats-raw.conf"
    config.write_text(_nats_config(port, files, work_dir / "jetstream-raw"))
    return config


def _nats_config(port: int, files: TlsFiles, store_dir: Path) -> str:
    return f"""
listen: "127.0.0.1:{port}"
tls {{
  cert_file: "{files.cert_file}"
  key_file: "{files.key_file}"
  ca_file: "{files.ca_file}"
  handshake_first: true
  verify: true
  min_version: "1.2"
}}
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
}}
"""


async def jetstream_publish(certs_dir: Path, work_dir: Path, *, in_flight: int, duration_s: float) -> RawLimit:
    """JetStream publishes per second, each acknowledged after fsync, over TLS, with a unique
    Nats-Msg-Id as the outbox relay sends them."""
    async with nats_server(certs_dir, work_dir) as server:
        client = await connect(server, certs_dir, name="bench")
        try:
            jetstream = client.jetstream()
            await jetstream.add_stream(name=RAW_STREAM, subjects=["bench.raw.>"])

            async def publish() -> None:
                await jetstream.publish(
                    "bench.raw.event", EVENT_PAYLOAD, headers={"Nats-Msg-Id": str(uuid.uuid4())}, timeout=10
                )

            count, elapsed_s, latencies = await closed_loop(publish, in_flight, duration_s)
        finally:
            await client.close()
    return RawLimit(JETSTREAM_PUBLISH, in_flight, count, elapsed_s, Latency.of(latencies))
