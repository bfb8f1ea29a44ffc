"""Certificate revocation: the CA's list of certificates that must no longer be accepted.

``paysaga-certs revoke NAME`` (or ``--serial``) adds a certificate's serial number to a CRL signed
by the CA and published as ``crl.pem`` next to ``ca.crt``; re-issuing with ``issue --force
--revoke-old`` revokes the certificate it replaces. Every gRPC server re-reads the file within
seconds (paysaga.runtime.security.revocation) and refuses each call, and each health or
reflection call, made with a revoked certificate, even on a connection opened before.

nats-server reads no CRL; it accepts only pinned keys (``pinned_certs``: the SHA-256 of each
allowed certificate's public key), and a reload with a shorter list disconnects the clients whose
key left it. NatsPins keeps that list for a certificates directory: every certificate's key seen
there, old ones included (a rotation must not cut the connections made with the certificate it
replaces), minus the keys of revoked certificates.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from paysaga.ops.pki.authority import CERTIFICATE_MODE, CertificateError, load_ca, utc_now
from paysaga.runtime.files import FileStamp, file_stamp, write_file
from paysaga.runtime.security.revocation import CRL_FILE

# A CRL names when the next one is due; services keep honouring this one past that date.
CRL_VALIDITY = dt.timedelta(days=365)


def revoked_serials(certs_dir: Path) -> dict[int, dt.datetime]:
    """The serials the published CRL revokes, with when."""
    try:
        crl = x509.load_pem_x509_crl((certs_dir / CRL_FILE).read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as error:
        raise CertificateError(f"{certs_dir / CRL_FILE} is not a PEM CRL: {error}") from None
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def revoke(ca_dir: Path, certs_dir: Path, serials: Iterable[int], now: dt.datetime | None = None) -> Path:
    """Publish a CRL with every serial revoked so far and these; signed by the current CA."""
    ca = load_ca(ca_dir)
    now = now or utc_now()
    revoked = revoked_serials(certs_dir)
    for serial in serials:
        revoked.setdefault(serial, now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca.private_key, hashes.SHA256())
    path = certs_dir / CRL_FILE
    write_file(path, crl.public_bytes(serialization.Encoding.PEM), CERTIFICATE_MODE)
    return path


def public_key_pin(certificate: x509.Certificate) -> str:
    """What nats-server's pinned_certs lists: hex SHA-256 of the DER SubjectPublicKeyInfo."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


class NatsPins:
    """The keys NATS may accept, for the certificates in certs_dir (see the module's doc)."""

    def __init__(self, certs_dir: Path) -> None:
        self.certs_dir = certs_dir
        self._seen: dict[int, str] = {}  # serial -> key pin, of every certificate seen
        self._read: dict[Path, FileStamp] = {}  # each file as it was when last read
        self._revoked: set[int] = set()
        self._pins: tuple[str, ...] = ()
        self.refresh()

    @property
    def pins(self) -> tuple[str, ...]:
        return self._pins

    def refresh(self) -> bool:
        """Look at the directory again; whether the pins changed."""
        for path in sorted(self.certs_dir.glob("*.crt")):
            stamp = file_stamp(path)
            if stamp is None or self._read.get(path) == stamp:
                continue  # gone, or read as it is
            try:
                certificate = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError):
                continue  # mid-rewrite, or not a certificate: next time
            self._seen.setdefault(certificate.serial_number, public_key_pin(certificate))
            self._read[path] = stamp
        # Unreadable now (mid-rewrite): the revocations read before still stand.
        with contextlib.suppress(CertificateError):
            self._revoked = set(revoked_serials(self.certs_dir))
        revoked_pins = {pin for serial, pin in self._seen.items() if serial in self._revoked}
        pins = tuple(sorted({pin for pin in self._seen.values() if pin not in revoked_pins}))
        changed, self._pins = pins != self._pins, pins
        return changed


def serial_of(certificate_file: Path) -> int:
    try:
        return x509.load_pem_x509_certificate(certificate_file.read_bytes()).serial_number
    except FileNotFoundError:
        raise CertificateError(f"no certificate {certificate_file}; revoke by --serial instead") from None
    except ValueError:
        raise CertificateError(f"{certificate_file} is not a PEM certificate") from None
