"""Small helpers the integration and end-to-end tests share: mTLS channels and NATS connections."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from nats.aio.client import Client as NatsClient

from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.runtime.messaging.streams import inbox_prefix
from paysaga.runtime.security import tls, tokens
from paysaga.runtime.settings import TlsFiles


def secure_channel(target: str, files: TlsFiles, token: str | None = None) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, tls.channel_credentials(files, token))


def client_token(
    certs_dir: Path,
    client: str = "ops",
    *,
    scopes: tuple[str, ...] = tokens.SCOPES,
    audiences: tuple[str, ...] = ("payments", "inventory", "ledger"),
    lifetime_s: int = 600,
    now: dt.datetime | None = None,
    certificate: Path | None = None,
) -> str:
    """A token from the CA script's signing key in certs_dir, as 'paysaga-certs token issue' makes
    one, bound to the client's certificate (certs_dir/<client>.crt unless given)."""
    return tokens.issue_client_token(
        certs_dir,
        client,
        services=audiences,
        scopes=scopes,
        certificate=certificate or certs_dir / f"{client}.crt",
        lifetime_s=lifetime_s,
        now=now,
    )


def channel_without_client_certificate(target: str, ca_file: Path) -> grpc.aio.Channel:
    """Trusts our CA for the server, but presents no certificate of its own."""
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca_file.read_bytes()))


def ssl_context_without_client_certificate(ca_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    """Poll condition until it holds; fail saying what did not happen within timeout_s."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)


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


async def connect_nats(
    url: str,
    context: ssl.SSLContext,
    identity: str = "spiffe://paysaga/client/ops",
    errors: list[Exception] | None = None,
) -> NatsClient:
    """One attempt, no reconnects: a refused handshake raises instead of retrying forever.

    identity picks the inbox the server lets this certificate's user subscribe to; errors, if
    given, collects what the server reports asynchronously (e.g. permission violations)."""

    async def quiet(error: Exception) -> None:
        if errors is not None:
            errors.append(error)

    client = NatsClient()
    try:
        await asyncio.wait_for(
            client.connect(
                url.split(","),
                tls=context,
                tls_handshake_first=True,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                connect_timeout=3,
                error_cb=quiet,
                inbox_prefix=inbox_prefix(identity),
            ),
            timeout=5,
        )
    except BaseException:
        await client.close()
        raise
    return client


async def connect_as(url: str, files: TlsFiles, errors: list[Exception] | None = None) -> NatsClient:
    """connect_nats with the certificate in files, as the identity it carries."""
    return await connect_nats(url, tls.client_ssl_context(files), tls.read_tls_files(files).identity, errors)
