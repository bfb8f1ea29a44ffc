"""Bearer tokens for external clients: signed JWTs (ES256) with scopes, issued by ops.

An external client (a merchant back end, an ops tool) proves who it is twice: with its client
certificate at the TLS handshake, and with a token in the ``authorization: Bearer ...`` metadata
of every call. The token says what it may do (``scope``), for which service (``aud``), until when
(``exp``), for whom (``sub``, the identity of the client certificate it must arrive with) and with
which certificate exactly (``cnf`` ``x5t#S256``, RFC 8705: the SHA-256 thumbprint of the client's
certificate): a stolen token is useless without that certificate's key, and another certificate
of the same identity (a re-issued one, or one a careless CA op made) does not carry it either.

Keys: the signing key (``token-signing.key``, private, next to the CA's key) signs tokens; the
services verify them with the public keys in ``token-keys.json`` (a JWKS next to ``ca.crt``).
Rotating the signing key keeps the previous public key in the JWKS, so tokens already issued
keep working until they expire. Signing and verification are PyJWT's; nothing here is crypto.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from paysaga.core.identity import InvalidName, check_name, client_identity, service_identity
from paysaga.runtime.files import FileStamp, file_stamp, write_file
from paysaga.runtime.security.ratelimit import Limit, limits_from_claim

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
DEFAULT_ISSUER = "paysaga"
SIGNING_KEY_FILE = "token-signing.key"
PUBLIC_KEYS_FILE = "token-keys.json"
DEFAULT_LIFETIME_S = 3600
MAX_LIFETIME_S = 30 * 24 * 3600
CLOCK_SKEW_S = 30
# The previous public key stays trusted after a rotation so tokens signed with it live out their time.
KEPT_PUBLIC_KEYS = 2
KEYS_CHECK_INTERVAL_S = 2.0
VERIFIED_CACHE_SIZE = 4096
# <service>:admin (ops) may do everything on that service; the others act on the client's own
# records only (paysaga.core.access).
SCOPES = (
    "payments:read",
    "payments:write",
    "payments:admin",
    "inventory:read",
    "inventory:write",
    "inventory:admin",
    "ledger:read",
    "ledger:write",
    "ledger:admin",
)


class TokenError(Exception):
    """A token cannot be issued (bad request, missing key); the message says what to do."""


class TokenRejected(Exception):
    """A presented token is not acceptable; the message says why and is safe to show the caller."""


@dataclass(frozen=True)
class Claims:
    subject: str
    scopes: frozenset[str]
    expires_at: dt.datetime
    # The x5t#S256 thumbprint of the one certificate the token may arrive with.
    certificate_thumbprint: str = ""
    # The client's own rate limits, if it was registered with some (paysaga.runtime.security.ratelimit).
    rate_limits: Mapping[str, Limit] = field(default_factory=dict)
    # The token's id (jti): what a revocation names.
    token_id: str = ""


class RevokedTokens:
    """The ids (jti) of tokens revoked before they expire, as the authorization server announced
    them (paysaga.runtime.messaging.revocations keeps this set current). An id is forgotten once
    its token has expired anyway; until then every call with it is refused."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_prune_at = 0.0

    def add(self, token_ids: Iterable[str], expires_at: float) -> None:
        """Revoke token_ids, which expire at expires_at (a Unix time; 0: keep them forever)."""
        until = expires_at + CLOCK_SKEW_S if expires_at else float("inf")
        with self._lock:
            for token_id in token_ids:
                self._until[token_id] = max(until, self._until.get(token_id, 0.0))

    def __contains__(self, token_id: object) -> bool:
        now = time.time()
        if now >= self._next_prune_at:
            self._prune(now)
        return token_id in self._until

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self, now: float) -> None:
        with self._lock:
            self._next_prune_at = now + 60.0
            self._until = {token_id: until for token_id, until in self._until.items() if until > now}


def certificate_thumbprint(der: bytes) -> str:
    """RFC 8705 x5t#S256: base64url (unpadded) of the SHA-256 of the certificate's DER encoding."""
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def thumbprint_of(certificate: x509.Certificate) -> str:
    return certificate_thumbprint(certificate.public_bytes(serialization.Encoding.DER))


def certificate_file_thumbprint(path: Path) -> str:
    """The x5t#S256 thumbprint of the (first) certificate in a PEM file."""
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise TokenError(f"no certificate {path}: a token is bound to its client's certificate") from None
    except ValueError:
        raise TokenError(f"{path} is not a PEM certificate") from None
    return thumbprint_of(certificate)


def audience_of(service: str) -> str:
    """A token's audience is the identity of the service it is for."""
    return service_identity(service)


# --- keys ---------------------------------------------------------------------------------


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 key id: base64url(SHA-256(the key's required members as canonical JSON))."""
    canonical = json.dumps({name: public_jwk[name] for name in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def public_jwk(private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update(kid=_thumbprint(jwk), alg=ALGORITHM, use="sig")
    return jwk


def load_signing_key(ca_dir: Path) -> ec.EllipticCurvePrivateKey:
    return read_signing_key(ca_dir / SIGNING_KEY_FILE)


def read_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in the PEM file path."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise TokenError(f"no token signing key {path}: create one with 'paysaga-certs token-key init'") from None
    except ValueError:
        raise TokenError(f"{path} is not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise TokenError(f"{path} is not a P-256 key (ES256)")
    return key


def read_public_keys(path: Path) -> list[dict[str, Any]]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except ValueError as error:
        raise TokenError(f"{path} is not a JSON Web Key Set: {error}") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise TokenError(f"{path} is not a JSON Web Key Set (no 'keys' list)")
    return [key for key in keys if isinstance(key, dict)]


def publish_public_keys(path: Path, keys: Sequence[dict[str, Any]]) -> None:
    write_file(path, (json.dumps({"keys": list(keys)}, indent=2) + "\n").encode(), 0o644)


def signing_key_summary(ca_dir: Path, key: ec.EllipticCurvePrivateKey) -> str:
    return f"token signing key {ca_dir / SIGNING_KEY_FILE} (kid {public_jwk(key)['kid']})"


# --- issuing ------------------------------------------------------------------------------


def issue_token(
    signing_key: ec.EllipticCurvePrivateKey,
    *,
    subject: str,
    audiences: Iterable[str],
    scopes: Iterable[str],
    bound_to: str,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    issuer: str = DEFAULT_ISSUER,
    now: dt.datetime | None = None,
    rate_limits: Mapping[str, Limit] | None = None,
) -> str:
    """A signed token for the client whose certificate proves identity subject, usable only with
    the certificate whose x5t#S256 thumbprint is bound_to; with rate_limits, the client's own
    limits per class of method instead of the services' defaults."""
    wanted = sorted(set(scopes))
    unknown = [scope for scope in wanted if scope not in SCOPES]
    if unknown:
        raise TokenError(f"unknown scope(s) {', '.join(unknown)}; known scopes: {', '.join(SCOPES)}")
    if not wanted:
        raise TokenError("a token needs at least one scope")
    audience = sorted(set(audiences))
    if not audience:
        raise TokenError("a token needs at least one audience (a service name)")
    if not bound_to:
        raise TokenError("a token must be bound to its client's certificate (its x5t#S256 thumbprint)")
    if not 1 <= lifetime_s <= MAX_LIFETIME_S:
        raise TokenError(f"lifetime must be between 1 s and {MAX_LIFETIME_S} s, got {lifetime_s}")
    issued_at = now or dt.datetime.now(dt.UTC)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "scope": " ".join(wanted),
        "iat": issued_at,
        "nbf": issued_at,
        "exp": issued_at + dt.timedelta(seconds=lifetime_s),
        "jti": str(uuid.uuid4()),
        "cnf": {"x5t#S256": bound_to},
    }
    if rate_limits:
        claims["rate_limits"] = {name: [limit.rate_per_s, limit.burst] for name, limit in rate_limits.items()}
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM, headers={"kid": public_jwk(signing_key)["kid"]})


def issue_client_token(
    key_dir: Path,
    client: str,
    *,
    services: Iterable[str],
    scopes: Iterable[str],
    certificate: Path,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    issuer: str = DEFAULT_ISSUER,
    now: dt.datetime | None = None,
    rate_limits: Mapping[str, Limit] | None = None,
) -> str:
    """A token for the client certificate named client (spiffe://paysaga/client/<client>), for the
    named services, bound to the certificate in the file certificate, signed with the key in
    key_dir."""
    try:
        subject = client_identity(check_name(client))
    except InvalidName as error:
        raise TokenError(str(error)) from None
    return issue_token(
        load_signing_key(key_dir),
        subject=subject,
        audiences=[audience_of(service) for service in services],
        scopes=scopes,
        bound_to=certificate_file_thumbprint(certificate),
        lifetime_s=lifetime_s,
        issuer=issuer,
        now=now,
        rate_limits=rate_limits,
    )


# --- verifying ----------------------------------------------------------------------------

_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is not meant for this service (audience)"),
    (jwt.InvalidIssuerError, "the token was not issued by the trusted issuer"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, f"the token is not signed with {ALGORITHM}"),
    (jwt.DecodeError, "the token is malformed"),
)


class TokenVerifier:
    """Checks tokens for one service against the public keys file, which it re-reads when it changes."""

    def __init__(
        self,
        keys_file: Path,
        *,
        audience: str,
        issuer: str | Sequence[str] = DEFAULT_ISSUER,
        revoked: RevokedTokens | None = None,
    ) -> None:
        self.keys_file = keys_file
        self.audience = audience
        # Ops' tokens name "paysaga"; the OAuth authorization server's name its URL.
        self.issuers = frozenset([issuer] if isinstance(issuer, str) else issuer)
        self.revoked = RevokedTokens() if revoked is None else revoked
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        # Tokens whose signature and terms verified, by their text (bounded; emptied when the keys change).
        self._verified: dict[str, Claims] = {}
        self._stamp: FileStamp = None
        self._next_check_at = 0.0
        self._refresh()
        if not self._keys:
            raise TokenError(
                f"no token public keys in {keys_file}: create the signing key with 'paysaga-certs token-key init'"
            )

    def _refresh(self, *, now_rather_than_later: bool = False) -> None:
        """Re-read the keys file if it changed; looks at most once per interval unless asked to now
        (a token with an unknown key id may be signed by a key published a moment ago)."""
        with self._lock:
            now = time.monotonic()
            if now < self._next_check_at and not now_rather_than_later:
                return
            self._next_check_at = now + KEYS_CHECK_INTERVAL_S
            current = file_stamp(self.keys_file)
            # A missing file (mid-rewrite) keeps the keys we have rather than lock everyone out.
            if current is None or current == self._stamp:
                return
            try:
                keys = {jwk["kid"]: jwt.PyJWK(jwk).key for jwk in read_public_keys(self.keys_file) if "kid" in jwk}
            except (TokenError, jwt.PyJWKError, KeyError) as error:
                log.warning("tokens.keys_unreadable", extra={"path": str(self.keys_file), "error": str(error)})
                return
            if self._stamp is not None:
                log.info("tokens.keys_reloaded", extra={"key_ids": sorted(keys)})
            self._stamp, self._keys = current, keys
            # A key no longer trusted takes its tokens' verdicts with it.
            self._verified = {}

    def verify(self, token: str) -> Claims:
        """The claims of token if it is acceptable now; TokenRejected saying why if not.

        A client sends the same token with every call until it renews it: its signature (most of
        the cost) is checked the first time only, its terms and the revocation list every time."""
        self._refresh()
        verified = self._verified  # a key change replaces it: a verdict reached before goes with the old one
        claims = verified.get(token)
        if claims is None:
            claims = self._verify_signed(token)
            if len(verified) >= VERIFIED_CACHE_SIZE:
                verified.clear()
            verified[token] = claims
        now = time.time()
        if now >= claims.expires_at.timestamp() + CLOCK_SKEW_S:
            self._verified.pop(token, None)
            raise TokenRejected("the token has expired")
        if claims.token_id in self.revoked:
            raise TokenRejected("the token has been revoked: get a new one")
        return claims

    def _verify_signed(self, token: str) -> Claims:
        try:
            key_id = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError:
            raise TokenRejected("the token is malformed") from None
        if not isinstance(key_id, str):
            raise TokenRejected("the token names no signing key (kid)")
        if key_id not in self._keys:
            self._refresh(now_rather_than_later=True)
        key = self._keys.get(key_id)
        if key is None:
            raise TokenRejected("the token is signed by a key this service does not trust")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuers,
                leeway=CLOCK_SKEW_S,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise TokenRejected(_reason(error)) from None
        scope = claims.get("scope", "")
        if not isinstance(scope, str) or not isinstance(claims["sub"], str):
            raise TokenRejected("the token's scope or subject is malformed")
        confirmation = claims.get("cnf")
        thumbprint = confirmation.get("x5t#S256") if isinstance(confirmation, dict) else None
        if not isinstance(thumbprint, str) or not thumbprint:
            raise TokenRejected("the token is not bound to a certificate (no cnf x5t#S256): issue a new one")
        token_id = claims.get("jti")
        return Claims(
            subject=claims["sub"],
            scopes=frozenset(scope.split()),
            expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
            certificate_thumbprint=thumbprint,
            rate_limits=limits_from_claim(claims.get("rate_limits")),
            token_id=token_id if isinstance(token_id, str) else "",
        )


def _reason(error: Exception) -> str:
    for kind, reason in _REASONS:
        if isinstance(error, kind):
            return reason
    return "the token is not valid"


# --- presenting ---------------------------------------------------------------------------


def read_token_file(path: Path) -> str:
    """The token a file holds (as write_token_file or 'paysaga-certs token issue --out' left it)."""
    return path.read_text().strip()


def write_token_file(path: Path, token: str) -> None:
    """Keep a token where read_token_file (and the paysaga CLI) find it: readable by its owner only."""
    write_file(path, (token + "\n").encode(), 0o600)


def bearer_credentials(token: str) -> grpc.CallCredentials:
    """Call credentials that send ``authorization: Bearer <token>`` with every call (TLS channels only).

    gRPC's own access-token credentials add the header inside its core; a Python metadata plugin
    would start a thread for every call. A client with a renewed token builds a new channel.
    """
    return grpc.access_token_call_credentials(token)
