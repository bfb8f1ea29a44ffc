"""Client tokens and the authorization rules, without a network: what is accepted and why not."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from paysaga.ops.client.cli import main as cli_main
from paysaga.ops.pki import authority, rotation
from paysaga.runtime.security import tokens
from paysaga.runtime.security.authz import AccessDenied, Authorizer, Rule
from paysaga.runtime.security.tokens import TokenError, TokenRejected, TokenVerifier

OPS = "spiffe://paysaga/client/ops"
DEPOSIT = "/paysaga.ledger.v1.LedgerService/Deposit"
ADMIN_RULE = Rule.clients("ledger:admin")
# The x5t#S256 thumbprints of two certificates (any 32-byte digests will do here).
CERTIFICATE = tokens.certificate_thumbprint(b"the ops certificate")
OTHER_CERTIFICATE = tokens.certificate_thumbprint(b"another certificate of the same identity")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    rotation.ensure_token_signing_key(tmp_path, tmp_path)
    return tmp_path


def issue(keys: Path, **overrides: object) -> str:
    options: dict[str, object] = {
        "subject": OPS,
        "audiences": [tokens.audience_of("ledger")],
        "scopes": ["ledger:admin"],
        "bound_to": CERTIFICATE,
    }
    options.update(overrides)
    return tokens.issue_token(tokens.load_signing_key(keys), **options)  # type: ignore[arg-type]


def verifier(keys: Path) -> TokenVerifier:
    return TokenVerifier(keys / tokens.PUBLIC_KEYS_FILE, audience=tokens.audience_of("ledger"))


def test_a_valid_token_yields_its_subject_and_scopes(keys: Path) -> None:
    claims = verifier(keys).verify(issue(keys, scopes=["ledger:admin", "ledger:read"]))

    assert claims.subject == OPS
    assert claims.scopes == {"ledger:admin", "ledger:read"}
    assert claims.expires_at > dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"now": dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), "lifetime_s": 60}, "the token has expired"),
        ({"now": dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)}, "the token is not valid yet"),
        ({"audiences": [tokens.audience_of("payments")]}, "not meant for this service"),
        ({"issuer": "someone-else"}, "not issued by the trusted issuer"),
    ],
)
def test_tokens_outside_their_terms_are_rejected(keys: Path, overrides: dict[str, object], reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason):
        verifier(keys).verify(issue(keys, **overrides))


def test_a_token_from_an_unknown_key_or_with_a_forged_signature_is_rejected(keys: Path, tmp_path: Path) -> None:
    stranger_dir = tmp_path / "stranger"
    rotation.ensure_token_signing_key(stranger_dir, stranger_dir)
    header, payload, _ = issue(keys).split(".")
    forged = ".".join((header, payload, issue(keys, scopes=["ledger:read"]).split(".")[2]))

    with pytest.raises(TokenRejected, match="a key this service does not trust"):
        verifier(keys).verify(issue(stranger_dir))
    with pytest.raises(TokenRejected, match="signature does not verify"):
        verifier(keys).verify(forged)
    with pytest.raises(TokenRejected, match="malformed"):
        verifier(keys).verify("not.a.token")


def test_after_a_signing_key_rotation_old_and_new_tokens_verify(keys: Path) -> None:
    old = issue(keys)
    rotation.rotate_token_signing_key(keys, keys)
    new = issue(keys)

    assert verifier(keys).verify(old).subject == OPS
    assert verifier(keys).verify(new).subject == OPS
    assert len(tokens.read_public_keys(keys / tokens.PUBLIC_KEYS_FILE)) == tokens.KEPT_PUBLIC_KEYS


def test_issuing_refuses_unknown_scopes_no_audience_and_absurd_lifetimes(keys: Path) -> None:
    with pytest.raises(TokenError, match="unknown scope"):
        issue(keys, scopes=["ledger:everything"])
    with pytest.raises(TokenError, match="at least one audience"):
        issue(keys, audiences=[])
    with pytest.raises(TokenError, match="lifetime"):
        issue(keys, lifetime_s=tokens.MAX_LIFETIME_S + 1)


def test_the_signing_key_is_p256_and_only_the_owner_may_read_it(keys: Path) -> None:
    key = tokens.load_signing_key(keys)

    assert isinstance(key.curve, ec.SECP256R1)
    assert (keys / tokens.SIGNING_KEY_FILE).stat().st_mode & 0o777 == 0o600


def authorize(
    keys: Path, identity: str, token: str | None, rule: Rule = ADMIN_RULE, certificate: str = CERTIFICATE
) -> grpc.StatusCode:
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    try:
        Authorizer({DEPOSIT: rule}, verifier(keys)).check(DEPOSIT, identity, metadata, certificate)
    except AccessDenied as denied:
        return denied.code
    return grpc.StatusCode.OK


def test_rules_allow_listed_identities_and_clients_with_the_scope(keys: Path) -> None:
    token = issue(keys)

    assert authorize(keys, OPS, token) == grpc.StatusCode.OK
    assert authorize(keys, OPS, None) == grpc.StatusCode.UNAUTHENTICATED
    assert authorize(keys, OPS, issue(keys, scopes=["ledger:read"])) == grpc.StatusCode.PERMISSION_DENIED
    assert authorize(keys, "spiffe://paysaga/client/acme", token) == grpc.StatusCode.UNAUTHENTICATED  # not its token
    assert authorize(keys, "spiffe://paysaga/inventory", token) == grpc.StatusCode.PERMISSION_DENIED
    assert authorize(keys, "", token) == grpc.StatusCode.UNAUTHENTICATED
    # A service named in a rule needs no token: its certificate is its proof.
    assert authorize(keys, "spiffe://paysaga/payments", None, Rule.clients("ledger:admin", "payments")) == (
        grpc.StatusCode.OK
    )
    assert authorize(keys, OPS, token, Rule(("spiffe://paysaga/payments",), "ledger:admin")) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_a_token_refusal_names_the_identity_the_method_and_the_reason(keys: Path) -> None:
    expired = issue(keys, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), lifetime_s=60)

    with pytest.raises(AccessDenied) as denied:
        Authorizer({DEPOSIT: ADMIN_RULE}, verifier(keys)).check(
            DEPOSIT, OPS, (("authorization", f"Bearer {expired}"),), CERTIFICATE
        )

    assert str(denied.value) == f"{OPS} calling {DEPOSIT}: the token has expired"
    assert expired not in str(denied.value)


def test_the_cli_refuses_a_token_file_that_does_not_exist(certs_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.token"
    ops = [f"--{flag}={certs_dir / f'ops.{suffix}'}" for flag, suffix in (("cert", "crt"), ("key", "key"))]

    assert cli_main([*ops, f"--ca={certs_dir / 'ca.crt'}", f"--token-file={missing}", "item", "list"]) == 2


def test_a_token_works_only_with_the_certificate_it_is_bound_to(keys: Path) -> None:
    token = issue(keys)
    assert verifier(keys).verify(token).certificate_thumbprint == CERTIFICATE

    assert authorize(keys, OPS, token, certificate=CERTIFICATE) == grpc.StatusCode.OK
    # Another certificate of the same identity (re-issued, or a second key pair): refused.
    assert authorize(keys, OPS, token, certificate=OTHER_CERTIFICATE) == grpc.StatusCode.UNAUTHENTICATED
    assert authorize(keys, OPS, token, certificate="") == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(AccessDenied) as denied:
        Authorizer({DEPOSIT: ADMIN_RULE}, verifier(keys)).check(
            DEPOSIT, OPS, (("authorization", f"Bearer {token}"),), OTHER_CERTIFICATE
        )
    assert "bound to another certificate of this identity" in str(denied.value)


def test_a_token_without_a_certificate_binding_is_refused_and_none_is_issued(keys: Path) -> None:
    unbound = jwt.encode(
        {
            "iss": tokens.DEFAULT_ISSUER,
            "sub": OPS,
            "aud": [tokens.audience_of("ledger")],
            "scope": "ledger:admin",
            "iat": dt.datetime.now(dt.UTC),
            "nbf": dt.datetime.now(dt.UTC),
            "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
        },
        tokens.load_signing_key(keys),
        algorithm=tokens.ALGORITHM,
        headers={"kid": tokens.public_jwk(tokens.load_signing_key(keys))["kid"]},
    )
    with pytest.raises(TokenRejected, match="not bound to a certificate"):
        verifier(keys).verify(unbound)
    with pytest.raises(TokenError, match="must be bound"):
        issue(keys, bound_to="")


def test_the_thumbprint_is_rfc_8705s_x5t_s256_of_the_certificate_file(tmp_path: Path) -> None:
    ca = authority.create_ca(tmp_path, tmp_path)
    authority.issue(ca, tmp_path, "acme-shop", authority.Kind.CLIENT)
    der = x509.load_pem_x509_certificate((tmp_path / "acme-shop.crt").read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert tokens.certificate_file_thumbprint(tmp_path / "acme-shop.crt") == expected
    assert len(expected) == 43 and "=" not in expected


def test_a_revoked_token_is_refused_until_it_would_have_expired(keys: Path) -> None:
    revoked = tokens.RevokedTokens()
    check = TokenVerifier(keys / tokens.PUBLIC_KEYS_FILE, audience=tokens.audience_of("ledger"), revoked=revoked)
    token, other = issue(keys), issue(keys)
    token_id = check.verify(token).token_id
    assert token_id

    revoked.add([token_id], expires_at=dt.datetime.now(dt.UTC).timestamp() + 600)

    with pytest.raises(TokenRejected, match="revoked"):
        check.verify(token)
    assert check.verify(other).token_id != token_id  # the others are untouched
    # Long expired, a revocation is forgotten: nothing could use that token anyway.
    revoked.add(["long-gone"], expires_at=dt.datetime.now(dt.UTC).timestamp() - 3600)
    revoked._prune(dt.datetime.now(dt.UTC).timestamp())
    assert "long-gone" not in revoked
    assert token_id in revoked


def test_tokens_of_every_trusted_issuer_verify_and_no_others(keys: Path) -> None:
    check = TokenVerifier(
        keys / tokens.PUBLIC_KEYS_FILE,
        audience=tokens.audience_of("ledger"),
        issuer=("paysaga", "https://127.0.0.1:8443"),
    )
    assert check.verify(issue(keys, issuer="https://127.0.0.1:8443")).subject == OPS
    assert check.verify(issue(keys)).subject == OPS
    with pytest.raises(TokenRejected, match="not issued by the trusted issuer"):
        check.verify(issue(keys, issuer="https://elsewhere:8443"))


def test_a_token_verified_once_is_still_refused_once_expired_or_revoked(
    keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = verifier(keys)
    token = issue(keys, lifetime_s=60)
    claims = check.verify(token)
    assert check.verify(token) == claims  # the second time from what the first verified

    later = claims.expires_at.timestamp() + tokens.CLOCK_SKEW_S + 1
    monkeypatch.setattr("paysaga.runtime.security.tokens.time.time", lambda: later)
    with pytest.raises(TokenRejected, match="expired"):
        check.verify(token)
    monkeypatch.undo()
    token = issue(keys)
    check.revoked.add([check.verify(token).token_id], expires_at=later)
    with pytest.raises(TokenRejected, match="revoked"):
        check.verify(token)
