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

A nats-server that paysaga-local does not run (the docker-compose clusters) gets the same list as a
file: publish_nats_pins writes ``nats-pins.conf`` (``pinned_certs: [...]``, for an ``include`` in
its configuration's tls block) next to ``crl.pem``, whenever paysaga-certs issues, revokes or
exports, and the nats export carries it. What NatsPins keeps in memory is kept there in
``nats-keys.json``: every key seen, by serial, until its certificate expires. nats-server reads
the file at start and at each reload (SIGHUP).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from paysaga.ops.pki.authority import CERTIFICATE_MODE, CertificateError, load_ca, utc_now
from paysaga.runtime.files import FileStamp, file_stamp, write_file
from paysaga.runtime.security.revocation import CRL_FILE

# A CRL names when the next one is due; services keep honouring this one past that date.
CRL_VALIDITY = dt.timedelta(days=365)
# nats-server's form of the revocations, next to crl.pem: the keys it may accept, for an include in
# the tls block of its configuration (paysaga.ops.cluster.natsconf.compose_config).
NATS_PINS_FILE = "nats-pins.conf"
# Every certificate key publish_nats_pins has seen in the directory, by serial, with its expiry: a
# certificate replaced by a rotation keeps its pin until it expires or is revoked.
NATS_KEYS_FILE = "nats-keys.json"
# nats-server (2.15) takes an empty pinned_certs for no pinning at all: every certificate of the CA
# would get in. With no key to accept, the list holds this pin instead, which no key has (the
# SHA-256 of nothing).
NO_KEY_PIN = hashlib.sha256(b"").hexdigest()


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
    """Publish a CRL with every serial revoked so far and these, signed by the current CA; and the
    NATS pins without their keys (publish_nats_pins)."""
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
    publish_nats_pins(certs_dir, now)
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


def publish_nats_pins(certs_dir: Path, now: dt.datetime | None = None) -> tuple[str, ...]:
    """Write certs_dir/nats-pins.conf: the keys nats-server may accept, as NatsPins has them, kept
    across runs in certs_dir/nats-keys.json. Every key of a certificate seen in certs_dir (now, or
    when this last ran) until that certificate expires, minus the keys of revoked certificates.
    Both files are rewritten only when their content changes; returns the pins."""
    now = now or utc_now()
    known = _known_keys(certs_dir)
    for path in sorted(certs_dir.glob("*.crt")):
        try:
            certificate = x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError):
            continue  # not a certificate (list and bootstrap report it); its key was not seen
        known.setdefault(certificate.serial_number, (public_key_pin(certificate), certificate.not_valid_after_utc))
    known = {serial: (pin, expires) for serial, (pin, expires) in known.items() if expires > now}
    revoked = set(revoked_serials(certs_dir))
    revoked_pins = {pin for serial, (pin, _) in known.items() if serial in revoked}
    pins = tuple(sorted({pin for pin, _ in known.values()} - revoked_pins))
    remembered = {f"{serial:x}": {"pin": pin, "expires": when.isoformat()} for serial, (pin, when) in known.items()}
    _write_if_changed(certs_dir / NATS_KEYS_FILE, (json.dumps(remembered, indent=2, sort_keys=True) + "\n").encode())
    _write_if_changed(certs_dir / NATS_PINS_FILE, nats_pins_include(pins).encode())
    return pins


def nats_pins_include(pins: Iterable[str]) -> str:
    """The pins as a nats-server configuration fragment, for an include in the tls block; no pin
    at all lets nobody in (NO_KEY_PIN), as nats-server would let everybody in with an empty list."""
    listed = ",\n".join(f"  {json.dumps(pin)}" for pin in (list(pins) or [NO_KEY_PIN]))
    return (
        "# Written by paysaga-certs (paysaga.ops.pki.revocation.publish_nats_pins); do not edit.\n"
        "# The keys this nats-server accepts (SHA-256 of each certificate's public key): every certificate\n"
        "# key the CA operator's directory has held, until the certificate expires, minus those of revoked\n"
        "# certificates. Read at start and at each reload (SIGHUP); a reload with a shorter list closes\n"
        "# the connections whose key left it.\n"
        f"pinned_certs: [\n{listed}\n]\n"
    )


def _known_keys(certs_dir: Path) -> dict[int, tuple[str, dt.datetime]]:
    path = certs_dir / NATS_KEYS_FILE
    try:
        remembered = json.loads(path.read_text())
        return {
            int(serial, 16): (str(entry["pin"]), dt.datetime.fromisoformat(entry["expires"]))
            for serial, entry in remembered.items()
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise CertificateError(
            f"{path} is unreadable ({error!r}); delete it to start afresh: the next run rebuilds it from the "
            "certificates present (the keys of replaced ones are forgotten, so their connections are cut at "
            "the next reload)"
        ) from None


def _write_if_changed(path: Path, content: bytes) -> None:
    try:
        if path.read_bytes() == content:
            return
    except FileNotFoundError:
        pass
    write_file(path, content, CERTIFICATE_MODE)


def serial_of(certificate_file: Path) -> int:
    try:
        return x509.load_pem_x509_certificate(certificate_file.read_bytes()).serial_number
    except FileNotFoundError:
        raise CertificateError(f"no certificate {certificate_file}; revoke by --serial instead") from None
    except ValueError:
        raise CertificateError(f"{certificate_file} is not a PEM certificate") from None
