"""What the authorization server knows of its clients and of the tokens it issued. Pure: the
OAuth protocol itself is Authlib's (services.auth.adapters.oauth)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from paysaga.core.access import service_of_scope
from paysaga.core.identity import client_identity, service_identity

# The two kinds of token this server issues (an IssuedToken's kind, RFC 7009's token_type_hint).
ACCESS_TOKEN = "access_token"
REFRESH_TOKEN = "refresh_token"
GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_REFRESH_TOKEN = "refresh_token"
DEFAULT_ACCESS_TOKEN_LIFETIME_S = 900
DEFAULT_REFRESH_TOKEN_LIFETIME_S = 24 * 3600
# The services' revocation list keeps a revoked token as long as the stream keeps the revocation
# (7 days): no token may live longer than that.
MAX_ACCESS_TOKEN_LIFETIME_S = 24 * 3600
MAX_REFRESH_TOKEN_LIFETIME_S = 30 * 24 * 3600


class RegistrationError(ValueError):
    """A client registration that cannot be accepted; the message says why."""


@dataclass(frozen=True)
class RegisteredClient:
    """A client ops registered: its client_id is the name in its certificate
    (spiffe://paysaga/client/<name>), which is also how it authenticates (RFC 8705 tls_client_auth)."""

    client_id: str
    scopes: frozenset[str]
    refresh_tokens: bool = False
    # Its own rate limits ("read=50/100,write=10/20"), "" for the services' defaults.
    rate_limits: str = ""
    access_token_lifetime_s: int = DEFAULT_ACCESS_TOKEN_LIFETIME_S
    refresh_token_lifetime_s: int = DEFAULT_REFRESH_TOKEN_LIFETIME_S

    @property
    def identity(self) -> str:
        return client_identity(self.client_id)

    @property
    def grant_types(self) -> tuple[str, ...]:
        return (GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN) if self.refresh_tokens else (GRANT_CLIENT_CREDENTIALS,)

    def check(self, known_scopes: Iterable[str]) -> RegisteredClient:
        unknown = sorted(self.scopes - set(known_scopes))
        if unknown:
            raise RegistrationError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(sorted(known_scopes))}")
        if not self.scopes:
            raise RegistrationError("a client needs at least one scope")
        if not 1 <= self.access_token_lifetime_s <= MAX_ACCESS_TOKEN_LIFETIME_S:
            raise RegistrationError(f"access token lifetime must be 1..{MAX_ACCESS_TOKEN_LIFETIME_S} s")
        if not 1 <= self.refresh_token_lifetime_s <= MAX_REFRESH_TOKEN_LIFETIME_S:
            raise RegistrationError(f"refresh token lifetime must be 1..{MAX_REFRESH_TOKEN_LIFETIME_S} s")
        return self


def audiences(scopes: Iterable[str]) -> list[str]:
    """A token is meant for the services its scopes are about (their identities)."""
    return sorted({service_identity(service_of_scope(scope)) for scope in scopes})


def refresh_token_hash(token: str) -> str:
    """Refresh tokens are kept hashed: the table alone cannot be used to refresh."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    """An access token (by its jti) or a refresh token (by its hash) this server issued."""

    kind: str  # ACCESS_TOKEN or REFRESH_TOKEN
    key: str  # jti or refresh token hash
    client_id: str
    scope: str
    family_id: str
    certificate_thumbprint: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None = None
    # A refresh token once used to refresh (rotated): using it again is a reuse.
    used_at: dt.datetime | None = None

    def active(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and self.used_at is None and now < self.expires_at
