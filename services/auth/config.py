"""The authorization server's own settings, beside every service's (flags and PAYSAGA_* variables)."""

from __future__ import annotations

import argparse

from paysaga.runtime.settings import Option


def https_url(text: str) -> str:
    """The issuer identifier: an https URL with no query or fragment (RFC 8414 section 2)."""
    if not text.startswith("https://") or "?" in text or "#" in text:
        raise argparse.ArgumentTypeError(f"must be an https:// URL without query or fragment, got {text!r}")
    return text.rstrip("/")


def host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"must be host:port, got {text!r}")
    return text


DEFAULT_HTTPS_PORT = 8443
OPTIONS = (
    Option(
        "--https-bind",
        "PAYSAGA_HTTPS_BIND",
        f"127.0.0.1:{DEFAULT_HTTPS_PORT}",
        "host:port to serve the OAuth endpoints on (HTTPS, mutual TLS)",
        host_port,
    ),
    Option(
        "--issuer",
        "PAYSAGA_OAUTH_ISSUER",
        f"https://localhost:{DEFAULT_HTTPS_PORT}",
        "this server's issuer identifier (its URL as clients reach it); tokens name it in iss",
        https_url,
    ),
    Option(
        "--signing-key",
        "PAYSAGA_TOKEN_SIGNING_KEY",
        "certs/token-signing.key",
        "the private key access tokens are signed with (paysaga-certs token-key init)",
        str,
    ),
)
