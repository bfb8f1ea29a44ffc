"""Create the paysaga CA and issue service and client certificates from it.

Every process proves who it is with a certificate from this CA. A certificate's identity is a
SPIFFE-style URI SAN: ``spiffe://paysaga/<service>`` for our services and
``spiffe://paysaga/client/<name>`` for external clients. Service certificates carry both server
and client usage (a service is a server to its callers and a client of NATS); client
certificates carry client usage only.

Keys are ECDSA P-256. Private keys are written 0600 through a temporary file and an atomic
rename, so a reader never sees half a key and a crash never leaves a world-readable one.

Leaf certificates are short-lived (30 days by default) and re-issued 10 days before they expire;
the servers pick up a re-issued certificate without a restart. ``ca.crt`` next to the issued
certificates is the trust bundle every peer reads: the current CA, plus the previous one while a
CA rollover is in progress (begin_ca_rollover → re-issue everything → finish_ca_rollover).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paysaga.core.identity import TRUST_DOMAIN, InvalidName, client_identity, service_identity
from paysaga.core.identity import check_name as check_identity_name
from paysaga.runtime.files import write_file
from paysaga.runtime.security.tls import uri_identity

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
PREVIOUS_CA_CERT_FILE = "ca-previous.crt"
CA_LIFETIME_DAYS = 3650
LEAF_LIFETIME_DAYS = 30
CLOCK_SKEW = dt.timedelta(minutes=5)
DNS_PATTERN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
RENEW_WITHIN_DAYS = 10
CLUSTER_SERVICES = ("nats", "payments", "inventory", "ledger", "auth", "reconcile")
# The cluster service that signs OAuth access tokens: its export alone also gets the token signing
# key (paysaga.ops.pki.rotation.export), never the CA's.
AUTHORIZATION_SERVER = "auth"
# The cluster service that runs nats-server: its export alone also gets the keys it may accept
# (paysaga.ops.pki.revocation.publish_nats_pins), since nats-server reads no CRL.
NATS_SERVER = "nats"
CLUSTER_CLIENTS = ("ops",)
PRIVATE_KEY_MODE = 0o600
CERTIFICATE_MODE = 0o644


class CertificateError(Exception):
    """An operation on certificates that cannot go ahead; the message says why and what to do."""


class Kind(StrEnum):
    CA = "ca"
    SERVICE = "service"
    CLIENT = "client"


@dataclass(frozen=True)
class Authority:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator needs to know about one certificate file."""

    name: str
    path: Path
    kind: Kind
    identity: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    issued_by_ca: bool
    # Issued by a CA still trusted during a rollover, not by the current one: re-issue it.
    issued_by_previous_ca: bool = False

    def summary(self) -> str:
        return f"{self.identity}, expires {self.not_after:%Y-%m-%d}"

    def days_left(self, now: dt.datetime) -> int:
        return (self.not_after - now).days

    def status(self, now: dt.datetime, warn_within_days: int) -> str:
        if self.issued_by_previous_ca:
            return "from the previous CA"
        if not self.issued_by_ca:
            return "not from this CA"
        if now < self.not_before:
            return "not yet valid"
        if now >= self.not_after:
            return "expired"
        if self.not_after - now <= dt.timedelta(days=warn_within_days):
            return "expiring"
        return "ok"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_name(name: str) -> str:
    """A name for a certificate's files and identity; CertificateError says what is wrong with it."""
    if name == CA_CERT_FILE.removesuffix(".crt"):
        raise CertificateError("the name 'ca' is reserved for the CA's own files")
    try:
        return check_identity_name(name)
    except InvalidName as error:
        raise CertificateError(str(error)) from None


def create_ca(
    ca_dir: Path,
    certs_dir: Path,
    *,
    common_name: str = "paysaga root CA",
    lifetime_days: int = CA_LIFETIME_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> Authority:
    """Create a new CA key and self-signed certificate; refuses to replace an existing CA."""
    key_path = ca_dir / CA_KEY_FILE
    if not force and (key_path.exists() or (ca_dir / CA_CERT_FILE).exists()):
        raise CertificateError(
            f"a CA already exists in {ca_dir} (or its certificate without its key); replacing it invalidates "
            "every certificate it issued. To replace it anyway: paysaga-certs init-ca --force"
        )
    _check_lifetime(lifetime_days)
    now = now or utc_now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=lifetime_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca_dir.mkdir(parents=True, exist_ok=True)
    write_file(key_path, private_pem(key), PRIVATE_KEY_MODE)
    write_file(ca_dir / CA_CERT_FILE, certificate.public_bytes(serialization.Encoding.PEM), CERTIFICATE_MODE)
    publish_ca_certificate(ca_dir, certs_dir)
    return Authority(certificate, key)


def publish_ca_certificate(ca_dir: Path, certs_dir: Path) -> None:
    """Write the trust bundle next to the issued certificates, where every peer reads it: the CA's
    certificate, and during a rollover the previous CA's too."""
    target = certs_dir / CA_CERT_FILE
    # The CA's own certificate comes first; when ca_dir is certs_dir, the file is the bundle itself.
    own = x509.load_pem_x509_certificates((ca_dir / CA_CERT_FILE).read_bytes())[0]
    content = own.public_bytes(serialization.Encoding.PEM)
    previous = ca_dir / PREVIOUS_CA_CERT_FILE
    if previous.exists():
        content += previous.read_bytes()
    if not target.exists() or target.read_bytes() != content:
        certs_dir.mkdir(parents=True, exist_ok=True)
        write_file(target, content, CERTIFICATE_MODE)


def load_ca(ca_dir: Path) -> Authority:
    key_path, cert_path = ca_dir / CA_KEY_FILE, ca_dir / CA_CERT_FILE
    if not key_path.exists() or not cert_path.exists():
        raise CertificateError(f"no CA in {ca_dir}: create one first with 'paysaga-certs init-ca'")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as error:
        raise CertificateError(f"the CA in {ca_dir} is unreadable: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an EC private key")
    if _kind_of(certificate) is not Kind.CA or not _same_key(certificate, key):
        raise CertificateError(f"{cert_path} and {key_path} are not a CA certificate and its key")
    return Authority(certificate, key)


def issue(
    authority: Authority,
    certs_dir: Path,
    name: str,
    kind: Kind,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    lifetime_days: int = LEAF_LIFETIME_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
    file_name: str | None = None,
) -> CertificateInfo:
    """Issue a key and certificate for a service or an external client into certs_dir, as
    <name>.crt and <name>.key, or with file_name, as <file_name>.crt and .key: another certificate
    for the same identity (e.g. one per ops workstation), which can be revoked on its own."""
    check_name(name)
    if kind is Kind.CA:
        raise CertificateError("use create_ca for a CA certificate")
    stem = check_name(file_name) if file_name is not None else name
    cert_path, key_path = certs_dir / f"{stem}.crt", certs_dir / f"{stem}.key"
    if not force and (cert_path.exists() or key_path.exists()):
        raise CertificateError(f"{cert_path} already exists; pass --force to re-issue it")
    _check_lifetime(lifetime_days)
    now = now or utc_now()
    not_after = min(now + dt.timedelta(days=lifetime_days), authority.certificate.not_valid_after_utc)
    if kind is Kind.SERVICE:
        identity = service_identity(name)
        dns = _unique([name, "localhost", *dns_names])
        ips = _unique(["127.0.0.1", "::1", *ip_addresses])
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        identity = client_identity(name)
        dns = _unique(dns_names)
        ips = _unique(ip_addresses)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    alternative_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity)]
    for value in dns:
        if not DNS_PATTERN.fullmatch(value):
            raise CertificateError(f"invalid DNS name {value!r}")
    alternative_names += [x509.DNSName(value) for value in dns]
    alternative_names += [x509.IPAddress(_parse_ip(value)) for value in ips]
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_public_key = authority.private_key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind.value),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
        .sign(authority.private_key, hashes.SHA256())
    )
    certs_dir.mkdir(parents=True, exist_ok=True)
    # The key goes first: a crash in between leaves an old certificate that no longer matches,
    # which the next bootstrap re-issues, never a new certificate without its key.
    write_file(key_path, private_pem(key), PRIVATE_KEY_MODE)
    write_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), CERTIFICATE_MODE)
    return describe(cert_path, authority.certificate)


def ensure_certificates(
    ca_dir: Path,
    certs_dir: Path,
    *,
    services: Sequence[str] = CLUSTER_SERVICES,
    clients: Sequence[str] = CLUSTER_CLIENTS,
    lifetime_days: int = LEAF_LIFETIME_DAYS,
    renew_within_days: int = RENEW_WITHIN_DAYS,
    dns_names: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Create the CA if there is none and (re-)issue what is missing, expiring, from another CA or
    without the extra DNS names dns_names gives it (e.g. {"nats": ["nats-2", "nats-3"]}: one
    certificate for every node of a NATS cluster).

    Never replaces an existing CA. Returns one line per certificate saying what was done.
    """
    extra = dict(dns_names or {})
    if (ca_dir / CA_KEY_FILE).exists():
        ca = load_ca(ca_dir)
        publish_ca_certificate(ca_dir, certs_dir)
        report = [f"kept CA {ca_dir / CA_CERT_FILE}"]
    else:
        ca = create_ca(ca_dir, certs_dir)
        report = [f"created CA {ca_dir / CA_CERT_FILE}"]
    now = utc_now()
    wanted = [(name, Kind.SERVICE) for name in services] + [(name, Kind.CLIENT) for name in clients]
    for name, kind in wanted:
        cert_path = certs_dir / f"{check_name(name)}.crt"
        current = _readable(cert_path, ca.certificate)
        reason = needs_issuing(current, cert_path.with_suffix(".key"), now, renew_within_days)
        missing = sorted(set(extra.get(name, ())) - set(current.dns_names if current else ()))
        if reason is None and missing:
            reason = f"without {', '.join(missing)}"
        if reason is None and current is not None:
            report.append(f"kept {kind.value} {name}: {current.summary()}")
            continue
        names = extra.get(name, ())
        info = issue(ca, certs_dir, name, kind, dns_names=names, lifetime_days=lifetime_days, force=True, now=now)
        report.append(f"issued {kind.value} {name} ({reason}): {info.summary()}")
    return report


def describe(
    cert_path: Path, ca_certificate: x509.Certificate | None, previous_ca: x509.Certificate | None = None
) -> CertificateInfo:
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = _alternative_names(certificate)
    return CertificateInfo(
        name=cert_path.stem,
        path=cert_path,
        kind=_kind_of(certificate),
        identity=uri_identity(certificate),
        dns_names=tuple(names.get_values_for_type(x509.DNSName)),
        ip_addresses=tuple(str(ip) for ip in names.get_values_for_type(x509.IPAddress)),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        issued_by_ca=ca_certificate is not None and _signed_by(certificate, ca_certificate),
        issued_by_previous_ca=previous_ca is not None and _signed_by(certificate, previous_ca),
    )


def _alternative_names(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def trust_bundle(certs_dir: Path) -> list[x509.Certificate]:
    """The CA certificates in certs_dir/ca.crt: the current CA first, then the previous one if any."""
    try:
        return x509.load_pem_x509_certificates((certs_dir / CA_CERT_FILE).read_bytes())
    except (OSError, ValueError):
        return []


def inventory(certs_dir: Path) -> tuple[list[CertificateInfo], list[Path]]:
    """Every certificate in certs_dir, the CA first, then by name; and the files that are unreadable."""
    bundle = trust_bundle(certs_dir)
    current = bundle[0] if bundle else None
    previous = bundle[1] if len(bundle) > 1 else None
    paths = sorted(certs_dir.glob("*.crt"), key=lambda path: (path.name != CA_CERT_FILE, path.name))
    found = [(path, _readable(path, current, previous)) for path in paths]
    return [info for _, info in found if info is not None], [
        path for path, info in found if info is None and path.exists()
    ]


def _readable(
    cert_path: Path, ca_certificate: x509.Certificate | None, previous_ca: x509.Certificate | None = None
) -> CertificateInfo | None:
    """The certificate's description, or None if the file is missing or not a PEM certificate."""
    try:
        return describe(cert_path, ca_certificate, previous_ca)
    except (OSError, ValueError):
        return None


def needs_issuing(info: CertificateInfo | None, key_path: Path, now: dt.datetime, renew_within_days: int) -> str | None:
    """Why a certificate must be (re-)issued, or None if it is fine as it is."""
    if info is None or not key_path.exists():
        return "missing"
    if not info.issued_by_ca:
        return "not issued by the current CA"
    if info.not_after - now <= dt.timedelta(days=renew_within_days):
        return "expired" if now >= info.not_after else "expiring"
    if not _key_matches(info.path, key_path):
        return "key does not match certificate"
    return None


def _key_matches(cert_path: Path, key_path: Path) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError:
        return False
    return _same_key(certificate, key)


def _same_key(certificate: x509.Certificate, key: Any) -> bool:
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    return bool(
        certificate.public_key().public_bytes(encoding, public) == key.public_key().public_bytes(encoding, public)
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a leaf only signs TLS handshakes (ECDSA needs nothing else)."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _kind_of(certificate: x509.Certificate) -> Kind:
    try:
        if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return Kind.CA
    except x509.ExtensionNotFound:
        pass
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return Kind.CLIENT
    return Kind.SERVICE if ExtendedKeyUsageOID.SERVER_AUTH in usages else Kind.CLIENT


def _signed_by(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    if certificate.issuer != ca_certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _check_lifetime(days: int) -> None:
    if days < 1:
        raise CertificateError(f"lifetime must be at least 1 day, got {days}")


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise CertificateError(f"invalid IP address {value!r}") from None


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
