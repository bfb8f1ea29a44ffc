"""How the paysaga CLI gets its own access token from the authorization server.

With --oauth-url (or $PAYSAGA_OAUTH_URL), the CLI asks the token endpoint for a token with its
client certificate (RFC 8705 tls_client_auth: no secret anywhere), keeps it beside the certificate
(<cert>.oauth.json, readable by its owner only), uses it while it has time left, refreshes it
when it is about to expire (if the client is registered for refresh tokens), and asks for a new
one when a refresh is refused. The OAuth client is Authlib's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from paysaga.core.identity import CLIENT_PREFIX
from paysaga.runtime.files import write_file
from paysaga.runtime.security import tls
from paysaga.runtime.security.tokens import thumbprint_of
from paysaga.runtime.settings import TlsFiles

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a path, not a password
# A token with less time than this left is renewed before use: a call must not outlive it.
RENEW_BEFORE_S = 60.0
TIMEOUT_S = 10.0


class TokenUnavailable(Exception):
    """The authorization server gave no token; the message says why."""


def cache_path(files: TlsFiles) -> Path:
    return files.cert_file.with_suffix(".oauth.json")


def _read_cache(path: Path, issuer: str, thumbprint: str) -> dict[str, Any]:
    """The cached token, if it is the issuer's and bound to this very certificate (not to the one
    it replaced)."""
    try:
        cached = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("issuer") != issuer or cached.get("x5t#S256") != thumbprint:
        return {}
    return cached


def forget(files: TlsFiles) -> None:
    """Drop the cached token (refused by a service: revoked, or its client's registration changed)."""
    cache_path(files).unlink(missing_ok=True)


def access_token(issuer: str, files: TlsFiles, *, now: float | None = None) -> str:
    """A current access token for the client whose certificate files holds."""
    # The HTTP and OAuth libraries are imported when a token is wanted: most of the CLI's
    # commands run without one, and they take a noticeable part of its start.
    import httpx2

    try:
        return _access_token(issuer, files, time.time() if now is None else now)
    except httpx2.HTTPError as error:
        raise TokenUnavailable(f"cannot get a token from {issuer}: {error}") from None


def _access_token(issuer: str, files: TlsFiles, now: float) -> str:
    material = tls.read_tls_files(files)
    thumbprint = thumbprint_of(material.certificate)
    path = cache_path(files)
    # One process at a time renews: two refreshing with one refresh token would look like a
    # stolen token to the server, which then revokes them both.
    with _locked(path.with_suffix(".lock")):
        cached = _read_cache(path, issuer, thumbprint)
        if cached.get("access_token") and float(cached.get("expires_at", 0)) - RENEW_BEFORE_S > now:
            return str(cached["access_token"])
        token = _renewed(issuer, files, material.identity, cached)
        record = {
            "issuer": issuer,
            "x5t#S256": thumbprint,
            "access_token": token["access_token"],
            "expires_at": now + float(token.get("expires_in", 0)),
            "refresh_token": token.get("refresh_token", ""),
        }
        with contextlib.suppress(OSError):  # a read-only certificate directory: no cache, a token per run
            write_file(path, (json.dumps(record) + "\n").encode(), 0o600)
    return str(token["access_token"])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:  # a read-only certificate directory: nothing cached, nothing to guard
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _renewed(issuer: str, files: TlsFiles, identity: str, cached: dict[str, Any]) -> dict[str, Any]:
    """A new token: by the cached refresh token if there is one and it is still good, else by a
    new client_credentials grant."""
    from authlib.integrations.base_client.errors import OAuthError
    from authlib.integrations.httpx_client import OAuth2Client

    endpoint = issuer.rstrip("/") + TOKEN_PATH
    if not identity.startswith(CLIENT_PREFIX):
        raise TokenUnavailable(f"{files.cert_file} is not a client certificate (no {CLIENT_PREFIX}<name> identity)")
    with OAuth2Client(
        identity.removeprefix(CLIENT_PREFIX),
        # The client_id in the body; the certificate authenticates (tls_client_auth).
        token_endpoint_auth_method="none",  # noqa: S106 - a method's name, not a password
        verify=tls.client_ssl_context(files),
        timeout=TIMEOUT_S,
    ) as session:
        token: dict[str, Any] | None = None
        if cached.get("refresh_token"):
            try:
                token = dict(session.refresh_token(endpoint, refresh_token=cached["refresh_token"]))
            except OAuthError:
                token = None  # refused (expired, revoked): start a new grant
        if token is None:
            try:
                token = dict(session.fetch_token(endpoint, grant_type="client_credentials"))
            except OAuthError as error:
                raise TokenUnavailable(f"{endpoint} refused a token: {error.error} {error.description or ''}") from None
    return token
