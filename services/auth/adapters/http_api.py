"""The authorization server's HTTPS endpoints (mutual TLS on every connection):

- ``POST /oauth2/token``: client_credentials and refresh_token grants (RFC 6749), clients
  authenticated by their certificate (RFC 8705 tls_client_auth), certificate-bound RFC 9068 JWTs;
- ``POST /oauth2/revoke`` (RFC 7009) and ``POST /oauth2/introspect`` (RFC 7662);
- ``GET /oauth2/jwks`` (the public keys tokens are signed with) and
  ``GET /.well-known/oauth-authorization-server`` (RFC 8414 metadata).

Each request: read what it needs from storage, let Authlib decide (services.auth.adapters.oauth),
commit what it decided in one transaction, then answer. Every refusal is logged with the peer's
address, its identity and the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import joserfc.errors
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from paysaga.core.identity import CLIENT_PREFIX, client_identity, service_identity
from paysaga.events.v1 import events_pb2
from paysaga.runtime.files import FileStamp, file_stamp
from paysaga.runtime.security import tls, tokens
from paysaga.runtime.security.revocation import RevocationList
from paysaga.runtime.storage.database import is_retryable, is_unavailable
from paysaga.runtime.storage.unit_of_work import Database
from services.auth.adapters.oauth import (
    AUTH_METHOD,
    GRANT_TYPES,
    AuthorizationServer,
    Exchange,
    FormRequest,
    Peer,
)
from services.auth.adapters.repository import AuthUnit
from services.auth.domain import ACCESS_TOKEN, GRANT_REFRESH_TOKEN, REFRESH_TOKEN, IssuedToken, refresh_token_hash

log = logging.getLogger(__name__)

TOKEN_PATH = "/oauth2/token"
REVOKE_PATH = "/oauth2/revoke"
INTROSPECT_PATH = "/oauth2/introspect"
JWKS_PATH = "/oauth2/jwks"
METADATA_PATH = "/.well-known/oauth-authorization-server"
KEYS_CHECK_INTERVAL_S = 2.0
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Refused(Exception):
    """A request refused before Authlib sees it (RFC 6749 section 5.2 error codes)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error


class SigningKeys:
    """The key tokens are signed with (re-read when the file changes: a rotation) and the public
    keys they are checked with (the JWKS the services trust, which keeps the previous key)."""

    def __init__(self, signing_key_file: Any, public_keys_file: Any) -> None:
        self.signing_key_file = signing_key_file
        self.public_keys_file = public_keys_file
        self._stamps: tuple[FileStamp, FileStamp] = (None, None)
        self._next_check_at = 0.0
        self.signing = KeySet([])
        self.public = KeySet([])
        self.public_document: dict[str, Any] = {"keys": []}
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the files if they changed; True if they did."""
        now = time.monotonic()
        if not force and now < self._next_check_at:
            return False
        self._next_check_at = now + KEYS_CHECK_INTERVAL_S
        stamps = (file_stamp(self.signing_key_file), file_stamp(self.public_keys_file))
        if stamps == self._stamps or None in stamps:
            return False
        private = tokens.read_signing_key(self.signing_key_file)
        kid = tokens.public_jwk(private)["kid"]
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.signing = KeySet([ECKey.import_key(pem, {"kid": kid, "alg": tokens.ALGORITHM, "use": "sig"})])
        public = tokens.read_public_keys(self.public_keys_file)
        if not any(key.get("kid") == kid for key in public):
            public.insert(0, tokens.public_jwk(private))
        self.public_document = {"keys": public}
        self.public = KeySet.import_key_set({"keys": public})
        self._stamps = stamps
        return True


def peer_of(request: web.Request, revocations: RevocationList) -> Peer:
    """The caller as its certificate proves it; refused if it carries no identity of ours or was revoked."""
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise Refused(401, "invalid_client", "a client certificate from the paysaga CA is required")
    certificate = x509.load_der_x509_certificate(der)
    identity = tls.uri_identity(certificate)
    if not identity.startswith(service_identity("")):
        raise Refused(401, "invalid_client", "the client certificate carries no paysaga identity")
    if revocations.is_revoked(certificate.serial_number):
        raise Refused(401, "invalid_client", "the client certificate has been revoked")
    name = identity.removeprefix(CLIENT_PREFIX) if identity.startswith(CLIENT_PREFIX) else ""
    return Peer(identity, name, tokens.certificate_thumbprint(der))


async def read_form(request: web.Request) -> dict[str, str]:
    """The form-encoded body; a parameter given twice is an error (RFC 6749 section 3.2)."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise Refused(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    try:
        form = await request.post()
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "invalid_request", "the body is not a valid form (UTF-8, URL-encoded)") from None
    values: dict[str, str] = {}
    for key, value in form.items():
        if key in values:
            raise Refused(400, "invalid_request", f"the parameter {key!r} is given more than once")
        if not isinstance(value, str):
            raise Refused(400, "invalid_request", f"the parameter {key!r} is not text")
        values[key] = value
    return values


def _json(status: int, body: Any, headers: Any = ()) -> web.Response:
    response = web.json_response(body, status=status, dumps=lambda value: json.dumps(value, separators=(",", ":")))
    for name, value in headers:
        if name.lower() != "content-type":
            response.headers[name] = value
    response.headers.update(NO_STORE)
    return response


class ReusedRefreshToken(Exception):
    """A refresh token rotated away by a concurrent request was used again."""


class AuthorizationEndpoints:
    def __init__(
        self,
        database: Database[AuthUnit],
        server: AuthorizationServer,
        keys: SigningKeys,
        revocations: RevocationList,
        issuer: str,
    ) -> None:
        self.database = database
        self.server = server
        self.keys = keys
        self.revocations = revocations
        self.issuer = issuer

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._refusals])
        app.router.add_post(TOKEN_PATH, self.token)
        app.router.add_post(REVOKE_PATH, self.revoke)
        app.router.add_post(INTROSPECT_PATH, self.introspect)
        app.router.add_get(JWKS_PATH, self.jwks)
        app.router.add_get(METADATA_PATH, self.metadata)
        return app

    @web.middleware
    async def _refusals(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except Refused as refused:
            log_refused(request, "", refused.error, str(refused))
            return _json(refused.status, {"error": refused.error, "error_description": str(refused)})
        except web.HTTPException:
            raise
        except Exception as error:
            # Nothing was committed (each request commits once, at its end). A database outage is
            # worth retrying; anything else is our fault, logged in full.
            if is_unavailable(error) or is_retryable(error):
                log.warning("oauth.unavailable", extra={"path": request.path, "error": repr(error)})
                response = _json(503, {"error": "temporarily_unavailable", "error_description": "try again shortly"})
                response.headers["Retry-After"] = "1"
                return response
            log.exception("oauth.failed", extra={"path": request.path, "peer_address": request.remote})
            return _json(500, {"error": "server_error", "error_description": "the server could not answer"})

    async def token(self, request: web.Request) -> web.StreamResponse:
        return await self._decide("token", request)

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        return await self._decide("revocation", request)

    async def introspect(self, request: web.Request) -> web.StreamResponse:
        return await self._decide("introspection", request)

    async def jwks(self, request: web.Request) -> web.StreamResponse:
        peer_of(request, self.revocations)
        self.keys.refresh()
        return web.json_response(self.keys.public_document, headers={"Cache-Control": "max-age=60"})

    async def metadata(self, request: web.Request) -> web.StreamResponse:
        peer_of(request, self.revocations)
        return web.json_response(server_metadata(self.issuer))

    async def _decide(self, endpoint: str, request: web.Request) -> web.StreamResponse:
        peer = peer_of(request, self.revocations)
        form = await read_form(request)
        check_parameters(endpoint, form)
        self.keys.refresh()  # the server signs with keys.signing, and _find checks with keys.public
        exchange = Exchange(peer, dt.datetime.now(dt.UTC))
        presented = form.get("refresh_token") if endpoint == "token" else form.get("token")
        async with self.database.transaction() as unit:
            exchange.now = unit.now()
            if peer.name:
                exchange.client = await unit.auth.client(peer.name)
            if presented:
                exchange.presented = await self._find(unit, presented)
        refresh = endpoint == "token" and form.get("grant_type") == GRANT_REFRESH_TOKEN
        if refresh and self._reused(exchange):
            assert exchange.presented is not None
            return await self._refuse_reuse(request, peer, exchange.presented)
        status, body, headers = self.server.decide(
            endpoint, FormRequest(str(request.url), request.headers, form, exchange)
        )
        if status == 200:
            try:
                await self._commit(exchange)
            except ReusedRefreshToken:
                assert exchange.rotated is not None
                return await self._refuse_reuse(request, peer, exchange.rotated)
            log.info(
                f"oauth.{endpoint}",
                extra={
                    "client": peer.identity,
                    "grant_type": form.get("grant_type", ""),
                    "peer_address": request.remote,
                },
            )
        else:
            answer = body if isinstance(body, dict) else {}
            log_refused(request, peer.identity, answer.get("error", ""), answer.get("error_description", ""))
        return _json(status, body, headers)

    async def _refuse_reuse(self, request: web.Request, peer: Peer, token: IssuedToken) -> web.StreamResponse:
        """A refresh token presented after it was rotated away: someone else has it. Its family is
        revoked, and the request refused."""
        await self._revoke_family(token, "refresh token reused")
        reason = "the refresh token was used before: its whole family is revoked"
        log.warning(
            "oauth.refresh_token_reused",
            extra={"peer_address": request.remote, "identity": peer.identity, "reason": reason, "alert": True},
        )
        return _json(400, {"error": "invalid_grant", "error_description": reason})

    @staticmethod
    def _reused(exchange: Exchange) -> bool:
        """A refresh token of this client's, already rotated away: someone else has it. (A revoked
        one is merely refused, as Authlib does.)"""
        presented, client = exchange.presented, exchange.client
        if presented is None or client is None or presented.kind != REFRESH_TOKEN:
            return False
        return presented.client_id == client.client_id and presented.used_at is not None

    async def _find(self, unit: AuthUnit, presented: str) -> IssuedToken | None:
        """The token a request presents: an access token of ours (its signature checked) by its
        jti, or a refresh token by its hash."""
        if presented.count(".") == 2:
            try:
                claims = jwt.decode(presented, self.keys.public, algorithms=[tokens.ALGORITHM]).claims
            except (joserfc.errors.JoseError, ValueError):
                return None
            jti = claims.get("jti")
            return await unit.auth.token(jti) if isinstance(jti, str) else None
        return await unit.auth.token(refresh_token_hash(presented))

    async def _commit(self, exchange: Exchange) -> None:
        async with self.database.transaction() as unit:
            if exchange.rotated is not None and not await unit.auth.mark_used(exchange.rotated.key):
                raise ReusedRefreshToken
            for issued in exchange.issued:
                await unit.auth.insert_token(issued)
            if exchange.revoke is not None:
                target = exchange.revoke
                if target.kind == REFRESH_TOKEN:
                    revoked = await unit.auth.revoke_family(target.family_id)
                else:
                    revoked = await unit.auth.revoke_token(target.key)
                announce(unit, target.client_id, revoked, "revoked by the client")

    async def _revoke_family(self, token: IssuedToken, reason: str) -> None:
        async with self.database.transaction() as unit:
            announce(unit, token.client_id, await unit.auth.revoke_family(token.family_id), reason)


def log_refused(request: web.Request, identity: str, error: str, reason: str) -> None:
    """An oauth.refused line: what was refused, to whom (address and identity, if known) and why."""
    log.warning(
        "oauth.refused",
        extra={
            "path": request.path,
            "peer_address": request.remote,
            "identity": identity,
            "error": error,
            "reason": reason,
        },
    )


def check_parameters(endpoint: str, form: dict[str, str]) -> None:
    """What Authlib would answer with a less fitting error: a token request without a grant type,
    a hint naming no type of token (RFC 6749 section 5.2, RFC 7009 section 2.2.1)."""
    if endpoint == "token" and not form.get("grant_type"):
        raise Refused(400, "invalid_request", "grant_type is required")
    hint = form.get("token_type_hint")
    if endpoint != "token" and hint is not None and hint not in (ACCESS_TOKEN, REFRESH_TOKEN):
        raise Refused(400, "unsupported_token_type", f"token_type_hint must be {ACCESS_TOKEN} or {REFRESH_TOKEN}")


def announce(unit: AuthUnit, client_id: str, revoked: list[IssuedToken], reason: str) -> None:
    """Tell every service of access tokens revoked before they expire (a TokensRevoked event)."""
    if not revoked:
        return
    expires_at = Timestamp()
    expires_at.FromDatetime(max(token.expires_at for token in revoked))
    unit.emit(
        events_pb2.TokensRevoked(
            token_ids=[token.key for token in revoked],
            expires_at=expires_at,
            client=client_identity(client_id),
            reason=reason,
        ),
        saga_id=client_id,
    )


def server_metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 metadata: where the endpoints are and what they support."""
    return {
        "issuer": issuer,
        "token_endpoint": issuer + TOKEN_PATH,
        "jwks_uri": issuer + JWKS_PATH,
        "revocation_endpoint": issuer + REVOKE_PATH,
        "introspection_endpoint": issuer + INTROSPECT_PATH,
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": [],
        "scopes_supported": list(tokens.SCOPES),
        "token_endpoint_auth_methods_supported": [AUTH_METHOD],
        "revocation_endpoint_auth_methods_supported": [AUTH_METHOD],
        "introspection_endpoint_auth_methods_supported": [AUTH_METHOD],
        # RFC 8705: access tokens are bound to the client certificate they were asked for with.
        "tls_client_certificate_bound_access_tokens": True,
    }
