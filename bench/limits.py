"""The raw limits of this machine, measured in the same run as the sagas: an mTLS echo RPC
(grpc.aio server and client, each in its own process, as between a client and a service) and a
JetStream publish acknowledged after fsync (a nats-server of its own, TLS, ``sync_interval:
always``, as the cluster's). Saga rates are reported as ratios of these, which survive a noisy or
different machine far better than absolute numbers."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.echo_server import METHOD
from bench.stats import Latency
from paysaga import messaging, tls
from paysaga.localcluster import find_nats_server, free_port
from paysaga.settings import TlsFiles

READY_TIMEOUT_S = 20.0
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


@contextlib.asynccontextmanager
async def _process(command: list[str], ready_line: str | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    # Only a process we wait for reports on stdout; others must never block on a full pipe.
    output = asyncio.subprocess.PIPE if ready_line is not None else asyncio.subprocess.DEVNULL
    process = await asyncio.create_subprocess_exec(*command, stdout=output, stderr=asyncio.subprocess.STDOUT)
    try:
        if ready_line is not None:
            assert process.stdout is not None
            line = (await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT_S)).decode().strip()
            if line != ready_line:
                raise RuntimeError(f"{command[0]} did not start: {line!r}")
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def echo_rpc(certs_dir: Path, *, concurrency: int, duration_s: float) -> RawLimit:
    """Unary RPCs per second between two processes over mutual TLS, the request echoed back."""
    server_files = TlsFiles.in_directory(certs_dir, "payments")
    target = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "bench.echo_server", "--bind", target]
    command += ["--cert", str(server_files.cert_file), "--key", str(server_files.key_file)]
    command += ["--ca", str(server_files.ca_file)]
    async with (
        _process(command, "ready"),
        tls.secure_channel(target, TlsFiles.in_directory(certs_dir, "ops")) as channel,
    ):
        echo = channel.unary_unary(METHOD)
        await echo(ECHO_PAYLOAD, timeout=10, wait_for_ready=True)
        count, elapsed_s, latencies = await closed_loop(lambda: echo(ECHO_PAYLOAD, timeout=10), concurrency, duration_s)
    return RawLimit("mTLS echo RPC", concurrency, count, elapsed_s, Latency.of(latencies))


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
    port = free_port()
    config = _write_nats_config(work_dir, port, TlsFiles.in_directory(certs_dir, "nats"))
    async with _process([find_nats_server(), "-c", str(config)]):
        client = await messaging.connect(
            f"tls://127.0.0.1:{port}", TlsFiles.in_directory(certs_dir, "ops"), name="bench", timeout_s=READY_TIMEOUT_S
        )
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
    return RawLimit("JetStream publish+ack (fsync)", in_flight, count, elapsed_s, Latency.of(latencies))
