"""paysaga-backup and paysaga-restore: online backups of a cluster's databases and JetStream
streams, with a manifest, and a cluster rebuilt from one.

  paysaga-backup DIR               # back up the running cluster into DIR (new or empty), then check it
  paysaga-backup --verify DIR      # check a backup: sizes, sha256, each database copy readable
  paysaga-restore DIR              # services stopped, NATS up: put the databases and streams back

Both connect to NATS as ops (certs/ops.crt by default) and take each service's database URL as
--<service>-db (default: the local cluster's SQLite files under .run/data). Exit status: 0 done,
1 failed (the reason is printed; a restore checks the backup before it changes anything), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as NatsClient

from paysaga.ops.backup import databases, jetstream, procedures
from paysaga.ops.backup.manifest import ManifestError
from paysaga.runtime.messaging import streams
from paysaga.runtime.settings import DEFAULT_NATS_URL, TlsFiles

# The services whose databases a backup holds (the reconciliation keeps none).
SERVICES = ("payments", "inventory", "ledger", "auth")
DEFAULT_STATE_DIR = Path(".run")
CONNECT_TIMEOUT_S = 10.0
# Said in a line, not a traceback: the operator's to act on (NATS' errors include a server too
# old for a request: consumer pauses need nats-server 2.11 or later).
FAILURES = (
    ManifestError,
    databases.DatabaseBackupError,
    jetstream.SnapshotError,
    nats.errors.Error,
    ConnectionError,
    OSError,
)


def parser(program: str, description: str) -> argparse.ArgumentParser:
    environ = os.environ
    certs = Path(environ.get("PAYSAGA_CERTS_DIR", "certs"))
    ops = TlsFiles.in_directory(certs, "ops")
    arguments = argparse.ArgumentParser(prog=program, description=description)
    add = arguments.add_argument
    add("directory", type=Path, help="the backup's directory")
    for service in SERVICES:
        variable = f"PAYSAGA_BACKUP_{service.upper()}_DATABASE_URL"
        default = environ.get(variable, f"sqlite+aiosqlite:///{DEFAULT_STATE_DIR / 'data' / service}.db")
        add(f"--{service}-db", default=default, help=f"{service}'s database URL (${variable}; default: %(default)s)")
    add("--nats-url", default=environ.get("PAYSAGA_NATS_URL", DEFAULT_NATS_URL), help="(default: %(default)s)")
    add("--cert", type=Path, default=ops.cert_file, help="ops' certificate (default: %(default)s)")
    add("--key", type=Path, default=ops.key_file)
    add("--ca", type=Path, default=ops.ca_file)
    return arguments


def _database_urls(args: argparse.Namespace) -> dict[str, str]:
    return {service: getattr(args, f"{service}_db") for service in SERVICES}


async def _connect(args: argparse.Namespace) -> NatsClient:
    files = TlsFiles(args.cert, args.key, args.ca)
    return await streams.connect(args.nats_url, files, name="paysaga-backup", timeout_s=CONNECT_TIMEOUT_S)


async def _back_up(args: argparse.Namespace) -> None:
    client = await _connect(args)
    try:
        manifest = await procedures.back_up(client, args.directory, _database_urls(args))
    finally:
        await client.close()
    for entry in manifest.databases:
        print(f"database {entry.service:<9} {entry.kind:<10} {entry.bytes:>12,} bytes  {entry.file}")
    for stream in manifest.streams:
        messages = stream.state.get("messages", 0)
        print(f"stream   {stream.name:<24} {messages:>9,} messages {stream.bytes:>12,} bytes")
    print(f"backup {args.directory}: taken {manifest.started_at} to {manifest.finished_at}, checked")


async def _restore(args: argparse.Namespace) -> None:
    client = await _connect(args)
    try:
        restored = await procedures.restore(
            client, args.directory, _database_urls(args), replace_streams=args.replace_streams, say=print
        )
    finally:
        await client.close()
    copied = min(entry.copied_at for entry in restored.manifest.databases) if restored.manifest.databases else "-"
    print(
        f"restored from {args.directory} in {restored.elapsed_s:.1f} s; the databases are as of {copied}: "
        "anything committed after that is not in this cluster. Start the services now."
    )


def _run(step: Coroutine[Any, Any, None], program: str) -> int:
    try:
        asyncio.run(step)
    except FAILURES as error:
        print(f"{program}: {error}", file=sys.stderr)
        return 1
    return 0


def backup_main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    arguments = parser("paysaga-backup", "Back up a running paysaga cluster: every database and stream.")
    arguments.add_argument("--verify", action="store_true", help="only check an existing backup")
    args = arguments.parse_args(argv)
    if args.verify:
        try:
            manifest = procedures.verify(args.directory)
        except FAILURES as error:
            print(f"paysaga-backup: {error}", file=sys.stderr)
            return 1
        count = len(manifest.databases) + len(manifest.streams)
        print(f"backup {args.directory}: {count} files match the manifest, every database copy reads back")
        return 0
    return _run(_back_up(args), "paysaga-backup")


def restore_main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    arguments = parser("paysaga-restore", "Rebuild a paysaga cluster from a backup (services stopped, NATS up).")
    arguments.add_argument(
        "--replace-streams", action="store_true", help="delete streams of the same names on NATS first"
    )
    return _run(_restore(arguments.parse_args(argv)), "paysaga-restore")
