"""Small helpers the integration and end-to-end tests share: mTLS channels and NATS connections."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import grpc
from nats.aio.client import Client as NatsClient

from paysaga import tls
from paysaga.localcluster import LocalCluster
from paysaga.settings import TlsFiles


def secure_channel(target: str, files: TlsFiles) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, tls.channel_credentials(files))


def channel_without_client_certificate(target: str, ca_file: Path) -> grpc.aio.Channel:
    """Trusts our CA for the server, but presents no certificate of its own."""
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes()))


def ssl_context_without_client_certificate(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def wait_for_log(cluster: LocalCluster, name: str, text: str, timeout_s: float = 10.0) -> str:
    """Poll a process's log until text appears; return the matching line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        path = cluster.log_path(name)
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in lines:
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the {name} log within {timeout_s} s:\n{cluster.log_tail(name)}")


async def connect_nats(url: str, context: ssl.SSLContext) -> NatsClient:
    """One attempt, no reconnects: a refused handshake raises instead of retrying forever."""

    async def quiet(_error: Exception) -> None:
        pass

    client = NatsClient()
    try:
        await asyncio.wait_for(
            client.connect(
                url, tls=context, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=3, error_cb=quiet
            ),
            timeout=5,
        )
    except BaseException:
        await client.close()
        raise
    return client
