"""Certificates that must be refused, each carrying an identity that would otherwise be allowed.

Every case presents spiffe://paysaga/client/ops, the identity our ops client has, so a refusal
can only be about what is wrong with the certificate itself.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paysaga.ops.pki import authority
from paysaga.runtime.files import write_file
from paysaga.runtime.settings import TlsFiles

IDENTITY = "spiffe://paysaga/client/ops"
CASES = ("self-signed", "other-ca", "expired", "not-yet-valid", "wrong-usage")


def _write(directory: Path, name: str, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    write_file(directory / f"{name}.key", authority.private_pem(key), authority.PRIVATE_KEY_MODE)
    write_file(
        directory / f"{name}.crt", certificate.public_bytes(serialization.Encoding.PEM), authority.CERTIFICATE_MODE
    )
    return TlsFiles(directory / f"{name}.crt", directory / f"{name}.key", directory / authority.CA_CERT_FILE)


def _leaf(
    issuer: x509.Name,
    signing_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    usages: list[x509.ObjectIdentifier],
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ops")]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(IDENTITY)]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )


def make(certs_dir: Path, target: Path) -> dict[str, TlsFiles]:
    """One TlsFiles per case in CASES, written to target; each trusts certs_dir's CA for the server."""
    target.mkdir(parents=True, exist_ok=True)
    (target / authority.CA_CERT_FILE).write_bytes((certs_dir / authority.CA_CERT_FILE).read_bytes())
    ca = authority.load_ca(certs_dir)
    now = authority.utc_now()
    day = dt.timedelta(days=1)
    client = [ExtendedKeyUsageOID.CLIENT_AUTH]
    made: dict[str, TlsFiles] = {}

    key = ec.generate_private_key(ec.SECP256R1())
    own_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ops")])
    made["self-signed"] = _write(
        target, "self-signed", key, _leaf(own_name, key, key, not_before=now - day, not_after=now + day, usages=client)
    )

    other = authority.create_ca(target / "other-ca", target / "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    made["other-ca"] = _write(
        target,
        "other-ca",
        key,
        _leaf(
            other.certificate.subject, other.private_key, key, not_before=now - day, not_after=now + day, usages=client
        ),
    )
    for name, not_before, not_after, usages in (
        ("expired", now - 10 * day, now - day, client),
        ("not-yet-valid", now + day, now + 10 * day, client),
        ("wrong-usage", now - day, now + day, [ExtendedKeyUsageOID.SERVER_AUTH]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _leaf(
            ca.certificate.subject, ca.private_key, key, not_before=not_before, not_after=not_after, usages=usages
        )
        made[name] = _write(target, name, key, certificate)
    assert set(made) == set(CASES)
    return made
