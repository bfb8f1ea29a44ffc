"""Three nats-servers with our configuration, joined by mutual-TLS routes: a stream replicated on
all three (R3) loses no acknowledged event when its leader is killed, and takes writes (single
publishes and atomic batches) again within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from paysaga.ops.cluster import natsconf
from paysaga.ops.cluster.localcluster import find_nats_server, free_port
from paysaga.runtime.messaging import streams
from paysaga.runtime.messaging.batches import Outgoing, publish_atomic
from paysaga.runtime.messaging.windows import ATOMIC_BATCH_MIN
from paysaga.runtime.settings import TlsFiles

NODES = 3
READY_TIMEOUT_S = 30.0
# A new leader is elected within a few seconds (measured about 5 s on our machines).
STALL_MAX_S = 20.0


class Node:
    def __init__(self, name: str, client_port: int, route_port: int, directory: Path) -> None:
        self.name, self.client_port, self.route_port, self.directory = name, client_port, route_port, directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.client_port}"

    def start(self, certs_dir: Path, peers: tuple[str, ...]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nats.conf"
        config.write_text(
            natsconf.render(
                server_name=self.name,
                host="127.0.0.1",
                port=self.client_port,
                tls=TlsFiles.in_directory(certs_dir, "nats"),
                store_dir=self.directory / "jetstream",
                routes=natsconf.Routes(f"127.0.0.1:{self.route_port}", peers),
            )
        )
        log = (self.directory / "nats.log").open("wb")
        self.process = subprocess.Popen([find_nats_server(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def nodes(certs_dir: Path, tmp_path: Path) -> Iterator[list[Node]]:
    started = [Node(f"n{index}", free_port(), free_port(), tmp_path / f"n{index}") for index in range(1, NODES + 1)]
    peers = tuple(f"127.0.0.1:{node.route_port}" for node in started)
    try:
        for node in started:
            node.start(certs_dir, peers)
        for node in started:
            _wait_listening(node.client_port)
        yield started
    finally:
        for node in started:
            node.stop()


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        assert time.monotonic() < deadline, f"nats-server on port {port} did not start"
        time.sleep(0.1)


@contextlib.asynccontextmanager
async def connected(nodes: list[Node], certs_dir: Path, name: str) -> AsyncIterator[NatsClient]:
    urls = ",".join(node.url for node in nodes)
    client = await streams.connect(urls, TlsFiles.in_directory(certs_dir, name), name=name, timeout_s=READY_TIMEOUT_S)
    try:
        yield client
    finally:
        await client.close()


async def publish(client: NatsClient, subject: str, message_ids: list[str], deadline_s: float) -> float:
    """Publish each message, acknowledged; retried (same Nats-Msg-Id) until deadline_s. Returns
    the longest any one took: the stall a service would see."""
    jetstream = client.jetstream()
    longest = 0.0
    for message_id in message_ids:
        started = time.monotonic()
        while True:
            try:
                await jetstream.publish(subject, b"event", headers={"Nats-Msg-Id": message_id}, timeout=2)
                break
            except (nats.errors.Error, TimeoutError):
                assert time.monotonic() < deadline_s, f"no acknowledgement for {message_id} in time"
                await asyncio.sleep(0.2)
        longest = max(longest, time.monotonic() - started)
    return longest


async def test_an_r3_stream_loses_no_acknowledged_event_when_its_leader_dies(
    nodes: list[Node], certs_dir: Path
) -> None:
    spec = streams.owned_streams("payments")[0]
    subject = "paysaga.events.payments.standard.PaymentCompleted"
    async with connected(nodes, certs_dir, "payments") as client:
        deadline_s = time.monotonic() + READY_TIMEOUT_S
        while True:  # until the cluster has elected its JetStream meta leader
            try:
                await streams.ensure_stream(client.jetstream(), spec, 3)
                break
            except (nats.errors.Error, TimeoutError):
                assert time.monotonic() < deadline_s, "the cluster never took the stream"
                await asyncio.sleep(0.5)
        before = [str(uuid.uuid4()) for _ in range(30)]
        await publish(client, subject, before, time.monotonic() + READY_TIMEOUT_S)
        info = await client.jetstream().stream_info(spec.name)
        assert info.cluster is not None and info.cluster.leader and len(info.cluster.replicas or []) == NODES - 1
        leader = next(node for node in nodes if node.name == info.cluster.leader)
        leader.stop()

        after = [str(uuid.uuid4()) for _ in range(30)]
        stall_s = await publish(client, subject, after, time.monotonic() + STALL_MAX_S)
        print(f"writes stalled {stall_s:.1f} s after the stream leader {leader.name} was killed")

        info = await client.jetstream().stream_info(spec.name)
        assert info.cluster is not None and info.cluster.leader not in (None, leader.name)
        # Every acknowledged event is there, once: the retried publishes were deduplicated.
        assert info.state.messages == len(before) + len(after)

        # A relay's atomic batch is stored whole on the replicated stream too, on the nodes left.
        batch = [Outgoing(subject, b"event", str(uuid.uuid4())) for _ in range(ATOMIC_BATCH_MIN)]
        await publish_atomic(client, batch, timeout_s=5)
        info = await client.jetstream().stream_info(spec.name)
        assert info.state.messages == len(before) + len(after) + len(batch)
