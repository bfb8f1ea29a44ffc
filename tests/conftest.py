"""Fixtures shared by every test layer: certificates from our CA script, in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from paysaga.pki import authority


@pytest.fixture(scope="session")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the cluster's certificates (nats, the three services, ops), made by the CA script's code."""
    directory = tmp_path_factory.mktemp("certs")
    authority.ensure_certificates(directory, directory)
    return directory


@pytest.fixture(scope="session")
def foreign_certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates with the same names from a different CA: valid-looking, but not ours."""
    directory = tmp_path_factory.mktemp("foreign-certs")
    authority.ensure_certificates(directory, directory)
    return directory
