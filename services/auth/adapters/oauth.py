"""The OAuth 2.0 protocol, by Authlib: the token endpoint's grants, revocation (RFC 7009),
introspection (RFC 7662) and RFC 9068 JWT access tokens signed with joserfc.

Authlib's server is synchronous, our storage is not. So each HTTP request is served in three
steps (services.auth.adapters.http_api): what the request needs from the database is read first
into an Exchange (the client its certificate names, the token it presents); Authlib then decides
on that alone, on the event loop, without I/O, recording what it issued, rotated or revoked in the
Exchange; last, that is committed in one transaction, with the revocation events in the outbox.
A decision that a concurrent request invalidated in between (a refresh token rotated twice) is
caught by the commit, which only rotates a token nobody else has.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.common.security import generate_token
from authlib.oauth2 import rfc6749
from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError, TokenMixin, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, OAuth2Request
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.jwk import KeySet
from joserfc.util import urlsafe_b64decode

from paysaga.core.identity import client_identity
from paysaga.runtime.security.ratelimit import parse_limits
from paysaga.runtime.security.tokens import SCOPES
from services.auth.domain import (
    ACCESS_TOKEN,
    GRANT_CLIENT_CREDENTIALS,
    GRANT_REFRESH_TOKEN,
    REFRESH_TOKEN,
    IssuedToken,
    RegisteredClient,
    audiences,
    refresh_token_hash,
)

AUTH_METHOD = "tls_client_auth"  # RFC 8705 section 2.1: the client certificate is the credential


@dataclass(frozen=True)
class Peer:
    """What the TLS handshake proved about the caller."""

    identity: str  # spiffe://paysaga/client/<name> or spiffe://paysaga/<service>
    name: str  # the client's name ("" for one of our services)
    certificate_thumbprint: str  # x5t#S256


class Client(ClientMixin):  # type: ignore[misc]
    """A registered client, as Authlib sees it."""

    def __init__(self, registered: RegisteredClient) -> None:
        self.registered = registered

    def get_client_id(self) -> str:
        return self.registered.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str | None) -> str:
        wanted = scope.split() if scope else sorted(self.registered.scopes)
        return " ".join(name for name in wanted if name in self.registered.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == AUTH_METHOD

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.registered.grant_types


class ResourceServer(ClientMixin):  # type: ignore[misc]
    """One of our services, authenticated by its certificate: it may introspect any token."""

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def get_client_id(self) -> str:
        return self.identity

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == AUTH_METHOD and endpoint == "introspection"

    def check_grant_type(self, grant_type: str) -> bool:
        return False


@dataclass(frozen=True)
class ClientItself:
    """The "user" of a refresh: with client credentials, the client acts for itself."""

    identity: str

    def get_user_id(self) -> str:
        return self.identity


class Token(TokenMixin):  # type: ignore[misc]
    def __init__(self, issued: IssuedToken, now: dt.datetime) -> None:
        self.issued = issued
        self.now = now

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.issued.client_id)

    def get_scope(self) -> str:
        return self.issued.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.issued.expires_at - self.now).total_seconds()))

    def is_expired(self) -> bool:
        return self.now >= self.issued.expires_at

    def is_revoked(self) -> bool:
        return self.issued.revoked_at is not None or self.issued.used_at is not None


@dataclass
class Exchange:
    """One request's dealings with storage: read before Authlib runs, committed after."""

    peer: Peer
    now: dt.datetime
    client: RegisteredClient | None = None
    # The token the request presents (a refresh token to use, a token to revoke or introspect).
    presented: IssuedToken | None = None
    # What Authlib decided, to be committed.
    issued: list[IssuedToken] = field(default_factory=list)
    rotated: IssuedToken | None = None
    revoke: IssuedToken | None = None


_EXCHANGE: contextvars.ContextVar[Exchange] = contextvars.ContextVar("paysaga_oauth_exchange")


class FormRequest(OAuth2Request):  # type: ignore[misc]
    """A form-encoded POST, already read, with its Exchange."""

    def __init__(self, uri: str, headers: Mapping[str, str], form: Mapping[str, str], exchange: Exchange) -> None:
        super().__init__("POST", uri, headers=dict(headers))
        self.payload = BasicOAuth2Payload(dict(form))
        self._form = dict(form)
        self.exchange = exchange

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


def authenticate_by_certificate(query_client: Any, request: FormRequest) -> ClientMixin | None:
    """RFC 8705 tls_client_auth: the client is the one its certificate names; a client_id in the
    form, if any, must name it too."""
    exchange = request.exchange
    named = request.form.get("client_id")
    if not exchange.peer.name:
        return ResourceServer(exchange.peer.identity) if named is None else None
    if exchange.client is None or (named is not None and named != exchange.client.client_id):
        return None
    return Client(exchange.client)


class _ScopeChecked:
    """Asking for a scope the client is not registered for is an error, not a quiet omission."""

    request: FormRequest

    def _check_scope(self) -> None:
        client = self.request.exchange.client
        wanted = set((self.request.payload.scope or "").split())
        if client is not None and not wanted <= client.scopes:
            raise InvalidScopeError(
                description="the client is not registered for " + " ".join(sorted(wanted - client.scopes))
            )


class ClientCredentialsGrant(_ScopeChecked, grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [AUTH_METHOD]  # noqa: RUF012 - Authlib's class attribute

    def validate_token_request(self) -> None:
        super().validate_token_request()
        self._check_scope()

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """As Authlib's, with a refresh token for the clients registered for them (RFC 6749 lets
        the server decide; ours rotate on every use)."""
        client = self.request.exchange.client
        token = self.generate_token(
            scope=self.request.payload.scope,
            include_refresh_token=client is not None and client.refresh_tokens,
        )
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class RefreshTokenGrant(_ScopeChecked, grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = [AUTH_METHOD]  # noqa: RUF012 - Authlib's class attribute
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: every refresh token is good for one use

    def validate_token_request(self) -> None:
        super().validate_token_request()
        client, presented = self.request.exchange.client, self.request.exchange.presented
        if client is not None and presented is not None and not set(presented.scope.split()) & client.scopes:
            raise InvalidScopeError(description="the client is no longer registered for any scope of this token")

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        exchange = self.request.exchange
        presented = exchange.presented
        if presented is None or presented.kind != REFRESH_TOKEN or not presented.active(exchange.now):
            return None
        if exchange.client is None or presented.client_id != exchange.client.client_id:
            return None
        return Token(presented, exchange.now)

    def authenticate_user(self, refresh_token: Token) -> ClientItself:
        return ClientItself(client_identity(refresh_token.issued.client_id))

    def revoke_old_credential(self, refresh_token: Token) -> None:
        self.request.exchange.rotated = refresh_token.issued


def _presented_token() -> Token | None:
    """The token the request being decided presents (read into its Exchange), if this server issued it."""
    exchange = _EXCHANGE.get()
    return None if exchange.presented is None else Token(exchange.presented, exchange.now)


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = [AUTH_METHOD]  # noqa: RUF012 - Authlib's class attribute

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return _presented_token()

    def revoke_token(self, token: Token, request: FormRequest) -> None:
        request.exchange.revoke = token.issued


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = [AUTH_METHOD]  # noqa: RUF012 - Authlib's class attribute

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return _presented_token()

    def check_permission(self, token: Token, client: ClientMixin, request: FormRequest) -> bool:
        """Our services may introspect any token; a client its own."""
        return isinstance(client, ResourceServer) or token.check_client(client)

    def introspect_token(self, token: Token) -> dict[str, Any]:
        issued = token.issued
        answer: dict[str, Any] = {
            "active": True,
            "client_id": issued.client_id,
            "scope": issued.scope,
            "token_type": "Bearer" if issued.kind == ACCESS_TOKEN else REFRESH_TOKEN,
            "iat": int(issued.issued_at.timestamp()),
            "exp": int(issued.expires_at.timestamp()),
            "iss": self.server.issuer,
            "sub": client_identity(issued.client_id),
            "aud": audiences(issued.scope.split()),
        }
        if issued.kind == ACCESS_TOKEN:
            answer["jti"] = issued.key
            answer["cnf"] = {"x5t#S256": issued.certificate_thumbprint}
        return answer


class AccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 access tokens for our services: audience the services the scopes are about,
    subject the client's identity, bound to the certificate it asked with (cnf x5t#S256), with its
    own rate limits if it was registered with some."""

    def __init__(self, issuer: str, signing_keys: Callable[[], KeySet]) -> None:
        super().__init__(
            issuer,
            alg="ES256",
            refresh_token_generator=lambda **_: generate_token(48),
            expires_generator=self._lifetime,
        )
        self.signing_keys = signing_keys

    @staticmethod
    def _lifetime(client: Client, grant_type: str) -> int:
        return client.registered.access_token_lifetime_s

    def get_jwks(self) -> KeySet:
        return self.signing_keys()

    def get_jti(self, client: Client, grant_type: str, user: Any, scope: str) -> str:
        return str(uuid.uuid4())

    def get_audiences(self, client: Client, user: Any, scope: str) -> list[str]:
        return audiences(scope.split())

    def get_extra_claims(self, client: Client, grant_type: str, user: Any, scope: str) -> dict[str, Any]:
        exchange = _EXCHANGE.get()
        claims: dict[str, Any] = {
            "sub": client.registered.identity,
            "nbf": int(exchange.now.timestamp()),
            "cnf": {"x5t#S256": exchange.peer.certificate_thumbprint},
        }
        if client.registered.rate_limits:
            limits = parse_limits(client.registered.rate_limits)
            claims["rate_limits"] = {name: [limit.rate_per_s, limit.burst] for name, limit in limits.items()}
        return claims


class AuthorizationServer(rfc6749.AuthorizationServer):  # type: ignore[misc]
    """Authlib's server for our grants and endpoints; decides on what the Exchange holds."""

    def __init__(self, issuer: str, signing_keys: Callable[[], KeySet]) -> None:
        """signing_keys gives the key set to sign with now (it follows a key rotation)."""
        super().__init__(scopes_supported=list(SCOPES))
        self.issuer = issuer
        self.access_tokens = AccessTokens(issuer, signing_keys)
        self.register_token_generator("default", self.access_tokens)
        self.register_client_auth_method(AUTH_METHOD, authenticate_by_certificate)
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    def query_client(self, client_id: str) -> None:
        return None  # clients come from the Exchange (authenticate_by_certificate)

    def save_token(self, token: dict[str, Any], request: FormRequest) -> None:
        exchange = request.exchange
        client = exchange.client
        assert client is not None  # only a registered client gets this far
        # Authlib saves the new token before it rotates the old one: the one presented is it.
        rotated = exchange.presented if request.payload.grant_type == GRANT_REFRESH_TOKEN else None
        family = rotated.family_id if rotated is not None else str(uuid.uuid4())
        scope = token.get("scope", "")
        # RFC 6749 section 6: a new refresh token has the scope of the one it replaces (what the
        # registration still allows), whatever narrower scope the access token was asked for.
        refresh_scope = " ".join(sorted(set(rotated.scope.split()) & client.scopes)) if rotated is not None else scope
        claims = json.loads(_payload_of(token["access_token"]))
        exchange.issued.append(
            IssuedToken(
                kind=ACCESS_TOKEN,
                key=claims["jti"],
                client_id=client.client_id,
                scope=scope,
                family_id=family,
                certificate_thumbprint=exchange.peer.certificate_thumbprint,
                issued_at=exchange.now,
                expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
            )
        )
        if "refresh_token" in token:
            exchange.issued.append(
                IssuedToken(
                    kind=REFRESH_TOKEN,
                    key=refresh_token_hash(token["refresh_token"]),
                    client_id=client.client_id,
                    scope=refresh_scope,
                    family_id=family,
                    certificate_thumbprint=exchange.peer.certificate_thumbprint,
                    issued_at=exchange.now,
                    expires_at=exchange.now + dt.timedelta(seconds=client.refresh_token_lifetime_s),
                )
            )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: FormRequest) -> FormRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def decide(self, endpoint: str, request: FormRequest) -> tuple[int, Any, list[tuple[str, str]]]:
        """Authlib's answer to request at endpoint ("token", "revocation" or "introspection")."""
        token = _EXCHANGE.set(request.exchange)
        try:
            if endpoint == "token":
                return self.create_token_response(request)  # type: ignore[no-any-return]
            return self.create_endpoint_response(endpoint, request)  # type: ignore[no-any-return]
        finally:
            _EXCHANGE.reset(token)


def _payload_of(jwt_text: str) -> bytes:
    """The claims of a JWT this server just signed (no need to verify our own signature)."""
    return urlsafe_b64decode(jwt_text.split(".")[1].encode())


GRANT_TYPES = (GRANT_CLIENT_CREDENTIALS, GRANT_REFRESH_TOKEN)
