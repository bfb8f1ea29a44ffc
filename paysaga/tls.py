"""Mutual TLS for gRPC and NATS from the files the CA script issued.

Both directions are verified: a server requires a client certificate chaining to our CA, and a
client verifies the server's certificate against the same CA. TLS 1.2 is the minimum everywhere.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from paysaga.settings import TlsFiles


class TlsConfigurationError(Exception):
    """A certificate, key or CA file is missing or unreadable; the message names it."""


@dataclass(frozen=True)
class TlsMaterial:
    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes


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
    material = TlsMaterial(*contents)
    try:
        certificate = x509.load_pem_x509_certificate(material.certificate_chain)
    except ValueError:
        raise TlsConfigurationError(f"{files.cert_file} is not a PEM certificate") from None
    try:
        x509.load_pem_x509_certificates(material.root_certificates)
    except ValueError:
        raise TlsConfigurationError(f"{files.ca_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(material.private_key, password=None)
    except (ValueError, TypeError):
        raise TlsConfigurationError(f"{files.key_file} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsConfigurationError(f"{files.key_file} is not the private key of {files.cert_file}")
    return material


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    material = read_tls_files(files)
    return grpc.ssl_server_credentials(
        [(material.private_key, material.certificate_chain)],
        root_certificates=material.root_certificates,
        require_client_auth=True,
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    material = read_tls_files(files)
    return grpc.ssl_channel_credentials(
        root_certificates=material.root_certificates,
        private_key=material.private_key,
        certificate_chain=material.certificate_chain,
    )


def secure_channel(targets: str, files: TlsFiles) -> grpc.aio.Channel:
    """An mTLS channel to one "host:port", or round-robin over several "host:port,host:port".

    Several addresses must be IP addresses (gRPC's ipv4/ipv6 resolver); their certificates are
    checked against the first address. With DNS, give one name that resolves to every replica
    (e.g. "dns:///payments:50051"); calls then still spread over its addresses.
    """
    credentials = channel_credentials(files)
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
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert_file), str(files.key_file))
    return context
