"""A gRPC server with one method that returns its request, over the same mTLS as the services.

The benchmark runs it in its own process to measure this machine's raw RPC rate:
``python -m bench.echo_server --bind 127.0.0.1:PORT --cert F --key F --ca F``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

import grpc

from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles

SERVICE = "paysaga.bench.Echo"
METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return request


def _identity(value: bytes) -> bytes:
    return value


async def serve(bind: str, files: TlsFiles) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_echo, request_deserializer=_identity, response_serializer=_identity)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),))
    server.add_secure_port(bind, tls.server_credentials(files))
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    arguments = parser.parse_args(argv)
    asyncio.run(serve(arguments.bind, TlsFiles(arguments.cert, arguments.key, arguments.ca)))


if __name__ == "__main__":
    main()
