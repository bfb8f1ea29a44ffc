"""Starting processes from a process that is busy with gRPC: every child gets to run.

The local cluster, the benchmark and these tests start services and servers while their own gRPC
channels are busy; a child that gRPC aborts between fork and exec would look like a crashed
service (see paysaga/__init__.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

CHILDREN = 150


async def test_children_forked_while_grpc_is_busy_all_run() -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = health_pb2_grpc.HealthStub(channel)

    async def keep_busy() -> None:
        while True:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)

    callers = [asyncio.create_task(keep_busy()) for _ in range(8)]
    failed = []
    try:
        for _ in range(CHILDREN):
            # A pre-exec hook, as the local cluster uses, makes Python fork rather than vfork.
            child = await asyncio.create_subprocess_exec(
                "true", preexec_fn=lambda: None, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            _, stderr = await asyncio.wait_for(child.communicate(), timeout=10)
            if child.returncode != 0:
                failed.append((child.returncode, stderr.decode(errors="replace")[-300:]))
    finally:
        for caller in callers:
            caller.cancel()
        for caller in callers:
            with contextlib.suppress(asyncio.CancelledError):
                await caller
        await channel.close()
        await server.stop(None)
    assert failed == [], f"{len(failed)} of {CHILDREN} children did not run: {failed[:3]}"
