"""paysaga-health: ask a paysaga gRPC service or the NATS server whether it is healthy, over mTLS.

  paysaga-health grpc 127.0.0.1:50051          # SERVING → exit 0
  paysaga-health nats tls://127.0.0.1:4222     # connected and JetStream answers → exit 0

The client certificate defaults to $PAYSAGA_TLS_CERT / _KEY / _CA, else certs/ops.{crt,key} and
certs/ca.crt. Exit 0 when healthy, 1 when not, 2 on a usage error. Used by docker-compose health
checks and by the local cluster while it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient

from paysaga.runtime.messaging.streams import tls_options
from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles


async def grpc_status(target: str, tls_files: TlsFiles, *, service: str = "", timeout_s: float = 3.0) -> str:
    """The health status name of service at target (e.g. "SERVING"); raises grpc.RpcError when unreachable."""
    async with grpc.aio.secure_channel(target, tls.channel_credentials(tls_files)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def nats_jetstream_ready(url: str, tls_files: TlsFiles, *, timeout_s: float = 3.0) -> None:
    """Connect over mTLS and ask JetStream for the account's info; raises when either fails."""

    async def quiet(_error: Exception) -> None:
        pass  # the caller reports the failure; nats-py's default prints a traceback

    client = NatsClient()
    try:
        # nats-py may retry a refused first connect forever; the check must end in time.
        await asyncio.wait_for(
            client.connect(
                url,
                error_cb=quiet,
                **tls_options(tls_files),
                connect_timeout=max(1, int(timeout_s)),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                name="paysaga-health",
            ),
            timeout=timeout_s,
        )
        await client.jetstream(timeout=timeout_s).account_info()
    finally:
        await client.close()


def default_client_tls(environ: dict[str, str] | None = None) -> TlsFiles:
    env = os.environ if environ is None else environ
    certs_dir = Path(env.get("PAYSAGA_CERTS_DIR", "certs"))
    fallback = TlsFiles.in_directory(certs_dir, "ops")
    return TlsFiles(
        Path(env.get("PAYSAGA_TLS_CERT", fallback.cert_file)),
        Path(env.get("PAYSAGA_TLS_KEY", fallback.key_file)),
        Path(env.get("PAYSAGA_TLS_CA", fallback.ca_file)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    # asyncio's notices about TLS shutdown are noise to a person running this tool.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    defaults = default_client_tls()
    parser = argparse.ArgumentParser(
        prog="paysaga-health", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("kind", choices=["grpc", "nats"])
    parser.add_argument("target", help="host:port of a gRPC service, or a tls:// NATS URL")
    parser.add_argument("--service", default="", help="gRPC service name to check (default: the whole server)")
    parser.add_argument(
        "--cert", type=Path, default=defaults.cert_file, help="client certificate (default: %(default)s)"
    )
    parser.add_argument("--key", type=Path, default=defaults.key_file, help="client private key (default: %(default)s)")
    parser.add_argument("--ca", type=Path, default=defaults.ca_file, help="CA certificate (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=3.0)
    args = parser.parse_args(argv)
    files = TlsFiles(args.cert, args.key, args.ca)
    try:
        if args.kind == "grpc":
            status = asyncio.run(grpc_status(args.target, files, service=args.service, timeout_s=args.timeout_s))
            print(f"{args.target}: {status}")
            return 0 if status == "SERVING" else 1
        asyncio.run(nats_jetstream_ready(args.target, files, timeout_s=args.timeout_s))
        print(f"{args.target}: JetStream ready")
        return 0
    except tls.TlsConfigurationError as error:
        print(f"paysaga-health: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"{args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - any failure to reach NATS means unhealthy
        print(f"{args.target}: unhealthy: {error!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
