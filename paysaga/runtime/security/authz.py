"""Who may call which gRPC method: identities from certificates, scopes from bearer tokens.

The TLS handshake has already proven that the caller holds a certificate from our CA with client
usage. Its identity is the certificate's SPIFFE URI: ``spiffe://paysaga/<service>`` for our own
services, ``spiffe://paysaga/client/<name>`` for external clients. Every method of our APIs has a
Rule listing the identities allowed to call it; an external client must also present a bearer
token issued to that same identity, meant for this service, carrying the method's scope.

The service's admin scope (``<service>:admin``, held by ops) is enough for every method of that
service; each call made with it is logged as an audit line. What the caller may do with a given
record (its own accounts, items and payments) is the servicer's to decide, with the Caller this
layer leaves in ``current_caller()`` (paysaga.core.access).

Refusals: no identity or a bad token is UNAUTHENTICATED; an identity or a scope that is not
allowed is PERMISSION_DENIED. The message names the identity and the method; it is logged too.
Tokens themselves never appear in messages or logs.
"""

from __future__ import annotations

import contextvars
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from paysaga.core.access import Caller, action_of_scope, admin_scope, service_of_scope
from paysaga.core.identity import client_identity, service_identity
from paysaga.runtime.security.ratelimit import Limit, RateLimiter, retry_after_ms
from paysaga.runtime.security.revocation import RevocationList
from paysaga.runtime.security.tokens import Claims, TokenRejected, TokenVerifier, thumbprint_of

log = logging.getLogger(__name__)

TRUST_DOMAIN_PREFIX = service_identity("")
CLIENT_PREFIX = client_identity("")
ANY_CLIENT = CLIENT_PREFIX + "*"
_CALLER: contextvars.ContextVar[Caller] = contextvars.ContextVar("paysaga_caller")


def current_caller() -> Caller:
    """The caller of the gRPC call being served (set once it was authorized)."""
    try:
        return _CALLER.get()
    except LookupError:
        raise RuntimeError("no authorized call is being served here") from None


class AccessDenied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Rule:
    """Identities allowed to call a method; clients (spiffe://paysaga/client/...) also need scope."""

    identities: tuple[str, ...]
    scope: str

    @classmethod
    def clients(cls, scope: str, *services: str) -> Rule:
        """Any external client whose token has scope, plus the named services of ours (certificate only)."""
        return cls((ANY_CLIENT, *(TRUST_DOMAIN_PREFIX + service for service in services)), scope)

    def allows(self, identity: str) -> bool:
        return any(
            identity.startswith(pattern[:-1]) if pattern.endswith("*") else identity == pattern
            for pattern in self.identities
        )


class Authorizer:
    """Decides one call: the caller's identity against the method's rule, then the client's token."""

    def __init__(self, rules: Mapping[str, Rule], verifier: TokenVerifier | None) -> None:
        self.rules = dict(rules)
        self.verifier = verifier

    def check(self, method: str, identity: str, metadata: Any, certificate_thumbprint: str = "") -> Caller:
        """The caller, if it may go ahead; raise AccessDenied with the status and reason if not."""
        return self.authorize(method, identity, metadata, certificate_thumbprint)[0]

    def authorize(
        self, method: str, identity: str, metadata: Any, certificate_thumbprint: str = ""
    ) -> tuple[Caller, Mapping[str, Limit] | None]:
        """check(), with the client's own rate limits from its token (None: no token, one of our
        services)."""
        if not identity.startswith(TRUST_DOMAIN_PREFIX):
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED, f"calling {method}: the client certificate carries no paysaga identity"
            )
        rule = self.rules.get(method)
        if rule is None or not rule.allows(identity):
            raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, f"{identity} may not call {method}")
        if not identity.startswith(CLIENT_PREFIX):
            return Caller(identity), None  # one of our services: its certificate is its proof
        try:
            claims = self._verified_token(metadata, identity, certificate_thumbprint)
        except AccessDenied as denied:
            raise AccessDenied(denied.code, f"{identity} calling {method}: {denied}") from None
        if rule.scope not in claims.scopes and admin_scope(service_of_scope(rule.scope)) not in claims.scopes:
            raise AccessDenied(
                grpc.StatusCode.PERMISSION_DENIED, f"{identity} needs the scope {rule.scope} to call {method}"
            )
        return Caller(identity, claims.scopes), claims.rate_limits

    def _verified_token(self, metadata: Any, identity: str, certificate_thumbprint: str) -> Claims:
        values = [value for key, value in (metadata or ()) if key == "authorization"]
        if len(values) != 1 or not isinstance(values[0], str) or not values[0].startswith("Bearer "):
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                "a bearer token is required (metadata 'authorization: Bearer <token>'); "
                "ops issue one with 'paysaga-certs token issue'",
            )
        if self.verifier is None:
            raise AccessDenied(grpc.StatusCode.UNAUTHENTICATED, "this service accepts no tokens")
        try:
            claims = self.verifier.verify(values[0].removeprefix("Bearer ").strip())
        except TokenRejected as error:
            raise AccessDenied(grpc.StatusCode.UNAUTHENTICATED, str(error)) from None
        if claims.subject != identity:
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the token was issued to {claims.subject}, not to the certificate's identity {identity}",
            )
        if not hmac.compare_digest(claims.certificate_thumbprint, certificate_thumbprint):
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                "the token is bound to another certificate of this identity (cnf x5t#S256): present the "
                "certificate it was issued with, or get a token for this one",
            )
        return claims


@dataclass(frozen=True)
class PeerCertificate:
    thumbprint: str  # x5t#S256
    serial: int


NO_CERTIFICATE = PeerCertificate("", -1)


@functools.lru_cache(maxsize=1024)
def _certificate_of_pem(pem: bytes) -> PeerCertificate:
    certificate = x509.load_pem_x509_certificate(pem)
    return PeerCertificate(thumbprint_of(certificate), certificate.serial_number)


def peer_certificate(context: grpc.aio.ServicerContext) -> PeerCertificate:
    """What matters of the certificate the peer presented."""
    values = list(context.auth_context().get("x509_pem_cert", []))
    return _certificate_of_pem(values[0]) if len(values) == 1 else NO_CERTIFICATE


def peer_identity(context: grpc.aio.ServicerContext) -> str:
    """The SPIFFE identity gRPC extracted from the verified client certificate ("" if none)."""
    values = list(context.auth_context().get("peer_spiffe_id", []))
    return values[0].decode() if len(values) == 1 else ""


class AuthorizationInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Applies an Authorizer to every method that has a rule; health and reflection stay open to
    any holder of one of our certificates, so standard tools can probe every service."""

    def __init__(
        self,
        authorizer: Authorizer,
        open_services: tuple[str, ...],
        limiter: RateLimiter | None = None,
        revocations: RevocationList | None = None,
    ) -> None:
        self.authorizer = authorizer
        self.limiter = limiter
        self.revocations = revocations
        self._limited_logged_at: dict[str, float] = {}
        self.open_prefixes = tuple(f"/{name}/" for name in open_services)
        # The guarded handler of a method depends only on the method: build it once, not per call.
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if method.startswith(self.open_prefixes):
            # Open to any certificate of ours that is not revoked.
            guarded = self._guard(method, handler, self._check_revocation)
        else:
            guarded = self._guard(method, handler, self._authorize)
        self._guarded[method] = guarded
        return guarded

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext, denied: AccessDenied) -> None:
        log.warning(
            "grpc.refused",
            extra={
                "peer": peer_identity(context) or "-",
                "peer_address": context.peer(),
                "method": method,
                "code": denied.code.name,
                "reason": str(denied),
            },
        )
        await context.abort(denied.code, str(denied))

    def _revoked(self, certificate: PeerCertificate) -> AccessDenied | None:
        if self.revocations is None or certificate is NO_CERTIFICATE:
            return None
        if not self.revocations.is_revoked(certificate.serial):
            return None
        return AccessDenied(
            grpc.StatusCode.UNAUTHENTICATED,
            f"the client certificate (serial {certificate.serial:x}) is revoked: get a new one from the CA operator",
        )

    async def _check_revocation(self, method: str, context: grpc.aio.ServicerContext) -> None:
        denied = self._revoked(peer_certificate(context))
        if denied is not None:
            await self._refuse(method, context, denied)

    async def _authorize(self, method: str, context: grpc.aio.ServicerContext) -> None:
        identity = peer_identity(context)
        certificate = peer_certificate(context)
        try:
            revoked = self._revoked(certificate)
            if revoked is not None:
                raise revoked
            caller, own_limits = self.authorizer.authorize(
                method, identity, context.invocation_metadata(), certificate.thumbprint
            )
        except AccessDenied as denied:
            await self._refuse(method, context, denied)
            return
        rule = self.authorizer.rules[method]
        admin = caller.is_admin(service_of_scope(rule.scope))
        if own_limits is not None and self.limiter is not None:
            kind = "admin" if admin else action_of_scope(rule.scope)
            wait_s = self.limiter.take(identity, kind, own_limits)
            if wait_s:
                pushback_ms = retry_after_ms(wait_s)
                self._log_limited(identity, method, kind)
                context.set_trailing_metadata(
                    (("grpc-retry-pushback-ms", str(pushback_ms)), ("retry-after-ms", str(pushback_ms)))
                )
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{identity} is over its {kind} rate limit here; retry in {pushback_ms} ms (nothing was done)",
                )
                return
        if admin:
            # Ops may do everything; every such call leaves a trace.
            log.info("audit.admin_call", extra={"audit": True, "peer": identity, "method": method})
        _CALLER.set(caller)

    def _log_limited(self, identity: str, method: str, kind: str) -> None:
        """One line per client per second at most: a flood of refusals must not flood the log."""
        now = time.monotonic()
        if now - self._limited_logged_at.get(identity, float("-inf")) >= 1.0:
            if len(self._limited_logged_at) > 10_000:
                self._limited_logged_at.clear()
            self._limited_logged_at[identity] = now
            log.warning("grpc.rate_limited", extra={"peer": identity, "method": method, "class": kind})

    def _guard(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        check: Callable[[str, grpc.aio.ServicerContext], Awaitable[None]],
    ) -> grpc.RpcMethodHandler:
        """handler behind check, which aborts the call if it may not go ahead."""
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await check(method, context)
                return await inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(method, context)
                async for response in inner_stream(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:  # reflection
            inner_both = handler.stream_stream

            async def both(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await check(method, context)
                async for response in inner_both(requests, context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(
                both, handler.request_deserializer, handler.response_serializer
            )
        raise TypeError(f"{method}: client-streaming methods are not supported by the authorization interceptor")
