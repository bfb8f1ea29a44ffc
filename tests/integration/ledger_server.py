"""A real ledger gRPC server (mTLS, tokens, a SQLite file) on a free port, for the tests of what
every service's gRPC layer does."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from paysaga.runtime.grpc_server import BuiltServer, create_server
from paysaga.runtime.security import tls
from paysaga.runtime.security.ratelimit import RateLimiter
from paysaga.runtime.security.revocation import RevocationList
from paysaga.runtime.security.tokens import PUBLIC_KEYS_FILE, TokenVerifier, audience_of
from paysaga.runtime.settings import TlsFiles
from paysaga.runtime.storage import migrations
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import Database
from services.ledger.adapters import grpc_api, tables
from services.ledger.adapters.repository import LedgerUnit

MIGRATIONS = Path(grpc_api.__file__).parents[1] / "migrations"


@contextlib.asynccontextmanager
async def running_ledger(
    certs_dir: Path,
    database_file: Path,
    *,
    limiter: RateLimiter | None = None,
    revocations: RevocationList | None = None,
) -> AsyncIterator[BuiltServer]:
    """Started (health NOT_SERVING until told), stopped on the way out."""
    engine = create_engine(f"sqlite+aiosqlite:///{database_file}")
    await migrations.upgrade(engine, MIGRATIONS)
    built = create_server(
        "127.0.0.1:0",
        tls.server_credentials(TlsFiles.in_directory(certs_dir, "ledger")),
        [grpc_api.grpc_service(Database(engine, tables.metadata, LedgerUnit, producer="ledger"))],
        TokenVerifier(certs_dir / PUBLIC_KEYS_FILE, audience=audience_of("ledger")),
        limiter,
        revocations,
    )
    await built.set_serving(False)
    await built.server.start()
    try:
        yield built
    finally:
        await built.server.stop(grace=None)
        await engine.dispose()
