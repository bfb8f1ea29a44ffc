"""Client channels: one address, or several replicas round-robin; bad addresses are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ("payments-1:50051,payments-2:50051", "several addresses must be IP addresses"),
        ("127.0.0.1:50051,[::1]:50051", "mix of IPv4 and IPv6 addresses"),
    ],
)
async def test_several_targets_must_be_ip_addresses_of_one_family(certs_dir: Path, targets: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tls.secure_channel(targets, TlsFiles.in_directory(certs_dir, "ops"))


async def test_files_that_do_not_belong_together_are_named(certs_dir: Path) -> None:
    mixed = TlsFiles(certs_dir / "ops.crt", certs_dir / "ledger.key", certs_dir / "ca.crt")

    with pytest.raises(tls.TlsConfigurationError, match=r"ledger\.key is not the private key of .*ops\.crt"):
        tls.read_tls_files(mixed)


@pytest.mark.parametrize("loose_mode", [0o640, 0o604, 0o644])
def test_a_private_key_others_may_read_is_refused(tmp_path: Path, certs_dir: Path, loose_mode: int) -> None:
    key = tmp_path / "ops.key"
    key.write_bytes((certs_dir / "ops.key").read_bytes())
    key.chmod(loose_mode)
    files = TlsFiles(certs_dir / "ops.crt", key, certs_dir / "ca.crt")

    with pytest.raises(
        tls.TlsConfigurationError, match=rf"accessible to other users \(mode {loose_mode:04o}\).*chmod 600"
    ):
        tls.read_tls_files(files)

    key.chmod(0o600)
    assert tls.read_tls_files(files).private_key == key.read_bytes()


def test_the_identity_is_the_certificates_uri(certs_dir: Path) -> None:
    assert tls.identity_of((certs_dir / "payments.crt").read_bytes()) == "spiffe://paysaga/payments"
    assert tls.identity_of((certs_dir / "ops.crt").read_bytes()) == "spiffe://paysaga/client/ops"
