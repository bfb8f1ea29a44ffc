"""Mutual TLS for gRPC and NATS from the files the CA script issued.

Both directions are verified: a server requires a client certificate chaining to our CA, and a
client verifies the server's certificate against the same CA. TLS 1.2 is the minimum everywhere.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from paysaga.runtime.files import FileStamp, file_stamp
from paysaga.runtime.security.tokens import bearer_credentials
from paysaga.runtime.settings import TlsFiles

log = logging.getLogger(__name__)

# How often a server looks at its certificate files for a re-issued certificate. A rotation is
# picked up by the first handshake after this many seconds; looking is three stat() calls.
RELOAD_CHECK_INTERVAL_S = 1.0


class TlsConfigurationError(Exception):
    """A certificate, key or CA file is missing or unreadable; the message names it."""


def uri_identity(certificate: x509.Certificate) -> str:
    """The identity a certificate proves: its first URI SAN (spiffe://paysaga/...), or "" if none."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else ""


@dataclass(frozen=True)
class TlsMaterial:
    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes
    certificate: x509.Certificate

    @property
    def identity(self) -> str:
        """The identity the certificate proves (spiffe://paysaga/...), or "" if it carries none."""
        return uri_identity(self.certificate)

    def describe(self) -> dict[str, str]:
        """What a log line says about the certificate: never the key, only public facts."""
        return {
            "identity": self.identity,
            "serial": f"{self.certificate.serial_number:x}",
            "not_after": self.certificate.not_valid_after_utc.isoformat(),
        }


def read_tls_files(files: TlsFiles) -> TlsMaterial:
    """Read and check the three files, so a mistake is reported with the file's name rather than
    as an opaque TLS library error later."""
    contents = []
    for label, path in (
        ("certificate", files.cert_file),
        ("private key", files.key_file),
        ("CA certificate", files.ca_file),
    ):
        try:
            contents.append(path.read_bytes())
        except OSError as error:
            raise TlsConfigurationError(
                f"cannot read {label} {path}: {error.strerror}. Generate certificates with 'paysaga-certs bootstrap'."
            ) from None
    check_private_key_mode(files.key_file)
    certificate_chain, private_key, root_certificates = contents
    try:
        certificate = x509.load_pem_x509_certificate(certificate_chain)
    except ValueError:
        raise TlsConfigurationError(f"{files.cert_file} is not a PEM certificate") from None
    try:
        x509.load_pem_x509_certificates(root_certificates)
    except ValueError:
        raise TlsConfigurationError(f"{files.ca_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError):
        raise TlsConfigurationError(f"{files.key_file} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsConfigurationError(f"{files.key_file} is not the private key of {files.cert_file}")
    return TlsMaterial(certificate_chain, private_key, root_certificates, certificate)


def check_private_key_mode(path: os.PathLike[str] | str) -> None:
    """Refuse a private key that anyone but its owner may read: it has to be treated as leaked."""
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        raise TlsConfigurationError(
            f"{path} is accessible to other users (mode {mode:04o}); a private key must be readable by its owner "
            f"only: chmod 600 {path}"
        )


def identity_of(certificate_pem: bytes) -> str:
    """The identity a PEM certificate proves: its first URI SAN, or "" if it has none."""
    return uri_identity(x509.load_pem_x509_certificate(certificate_pem))


def fingerprint(files: TlsFiles) -> tuple[FileStamp, ...]:
    return tuple(file_stamp(path) for path in (files.cert_file, files.key_file, files.ca_file))


class CertificateWatcher:
    """Follows a certificate, its key and the CA bundle across rotations.

    poll() returns the new material only when the files changed and form a valid set again; a
    half-finished rotation (new key, old certificate) is kept out until it is whole. The files'
    stamps are taken before they are read, so a rotation that lands during a read is seen at the
    next poll rather than missed. Safe to call from any thread (gRPC calls it from its own).
    Callers decide how often to poll (check_interval_s is the usual period).
    """

    def __init__(self, files: TlsFiles, *, check_interval_s: float = RELOAD_CHECK_INTERVAL_S) -> None:
        self.files = files
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._seen = fingerprint(files)
        self.material = read_tls_files(files)

    def poll(self) -> TlsMaterial | None:
        """The new material if the files changed since the last poll and form a valid set now."""
        with self._lock:
            current = fingerprint(self.files)
            if current == self._seen:
                return None
            try:
                material = read_tls_files(self.files)
            except (TlsConfigurationError, OSError) as error:
                log.warning("tls.reload_waiting", extra={"error": str(error)})
                return None
            self._seen, self.material = current, material
            return material


def _server_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.certificate_chain)], root_certificates=material.root_certificates
    )


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that require a client certificate from our CA and follow certificate rotation:
    a re-issued certificate, key or CA bundle is used from the next handshake on, without a
    restart; connections already open keep the certificate they were made with."""
    watcher = CertificateWatcher(files)
    next_check_at = time.monotonic() + watcher.check_interval_s

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # gRPC asks before every handshake: look at the files at most once per check interval.
        nonlocal next_check_at
        if time.monotonic() < next_check_at:
            return None
        next_check_at = time.monotonic() + watcher.check_interval_s
        material = watcher.poll()
        if material is None:
            return None
        log.info("tls.reloaded", extra=material.describe())
        return _server_configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _server_configuration(watcher.material), fetch, require_client_authentication=True
    )


def channel_credentials(files: TlsFiles, token: str | None = None) -> grpc.ChannelCredentials:
    """mTLS with files; with a token, every call also carries it as ``authorization: Bearer ...``,
    as external clients must."""
    material = read_tls_files(files)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=material.root_certificates,
        private_key=material.private_key,
        certificate_chain=material.certificate_chain,
    )
    if token is None:
        return credentials
    return grpc.composite_channel_credentials(credentials, bearer_credentials(token))


def secure_channel(targets: str, files: TlsFiles, token: str | None = None) -> grpc.aio.Channel:
    """An mTLS channel to one "host:port", or round-robin over several (see channel())."""
    return channel(targets, channel_credentials(files, token))


def channel(targets: str, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    """A channel with credentials to one "host:port", or round-robin over "host:port,host:port".

    Several addresses must be IP addresses (gRPC's ipv4/ipv6 resolver); their certificates are
    checked against the first address. With DNS, give one name that resolves to every replica
    (e.g. "dns:///payments:50051"); calls then still spread over its addresses.
    """
    options = [("grpc.lb_policy_name", "round_robin")]
    addresses = [address.strip() for address in targets.split(",") if address.strip()]
    if len(addresses) == 1:
        return grpc.aio.secure_channel(addresses[0], credentials, options=options)
    hosts = [address.rsplit(":", 1)[0].strip("[]") for address in addresses]
    try:
        versions = {ipaddress.ip_address(host).version for host in hosts}
    except ValueError:
        raise ValueError(
            f"several addresses must be IP addresses, got {targets!r}; for host names use one DNS name that "
            "resolves to every replica, e.g. dns:///payments:50051"
        ) from None
    if len(versions) > 1:
        raise ValueError(f"mix of IPv4 and IPv6 addresses in {targets!r}")
    host = hosts[0]
    scheme = "ipv6:" if versions == {6} else "ipv4:"
    options.append(("grpc.ssl_target_name_override", host))
    return grpc.aio.secure_channel(scheme + ",".join(addresses), credentials, options=options)


def client_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A context for connecting to NATS: verify the server against our CA, present our certificate."""
    read_tls_files(files)  # fail with a readable message before ssl's terse one
    return checked_client_ssl_context(files)


def checked_client_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """client_ssl_context for files read_tls_files has just accepted."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert_file), str(files.key_file))
    return context


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """A context for serving HTTPS with mutual TLS: present our certificate, require a client
    certificate from our CA (TLS 1.2 or later)."""
    read_tls_files(files)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(files.cert_file), str(files.key_file))
    return context
