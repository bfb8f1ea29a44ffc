"""Fixtures shared by every test layer: certificates from our CA script, in a temporary directory."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from paysaga.ops.cluster.postgres import PostgresUnavailable, ThrowawayPostgres
from paysaga.ops.pki import rotation


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the cluster's certificates (nats, the three services, ops), made by the CA script's code."""
    directory = tmp_path_factory.mktemp("certs")
    rotation.bootstrap(directory, directory)
    return directory


@pytest.fixture(scope="session")
def foreign_certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates with the same names from a different CA: valid-looking, but not ours."""
    directory = tmp_path_factory.mktemp("foreign-certs")
    rotation.bootstrap(directory, directory)
    return directory


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """A throwaway PostgreSQL server on a free port, for the whole test session."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        server = ThrowawayPostgres(port)
    except PostgresUnavailable as error:
        # Locally a missing PostgreSQL skips those cases, saying why; under CI it is a failure.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs PostgreSQL: {error}")
        pytest.skip(str(error))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend: the same contract must hold on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    server: ThrowawayPostgres = request.getfixturevalue("postgres")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")
