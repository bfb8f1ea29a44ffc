"""Operating the CA over time: expiry checks, CA rollover, per-host export, token signing keys.

Everything here builds on paysaga.ops.pki.authority; the command line is paysaga-certs.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from paysaga.ops.pki import revocation
from paysaga.ops.pki.authority import (
    AUTHORIZATION_SERVER,
    CA_CERT_FILE,
    CA_LIFETIME_DAYS,
    CERTIFICATE_MODE,
    NATS_SERVER,
    PREVIOUS_CA_CERT_FILE,
    PRIVATE_KEY_MODE,
    Authority,
    CertificateError,
    Kind,
    check_name,
    create_ca,
    ensure_certificates,
    inventory,
    load_ca,
    private_pem,
    publish_ca_certificate,
)
from paysaga.runtime.files import write_file
from paysaga.runtime.security import tokens
from paysaga.runtime.security.revocation import CRL_FILE
from paysaga.runtime.settings import DEFAULT_GRPC_PORTS

# An ops client's token (every scope, every service): paysaga-local and the compose cluster's
# certs job write a fresh one at every start.
OPS_TOKEN_LIFETIME_S = 24 * 3600


def expiry_problems(certs_dir: Path, now: dt.datetime, warn_within_days: int) -> list[str]:
    """One line per certificate that needs an operator: expiring, expired, not valid yet, not from
    the current CA, or unreadable. Empty when all is well (what monitoring wants to see)."""
    infos, unreadable = inventory(certs_dir)
    if not infos:
        return [f"no CA certificate in {certs_dir}: run 'paysaga-certs bootstrap'"]
    problems = [f"{path}: not a readable PEM certificate" for path in unreadable]
    for info in infos:
        if info.kind is Kind.CA and info.issued_by_previous_ca:
            continue  # the previous CA during a rollover: trusted on purpose until 'ca-rollover finish'
        status = info.status(now, warn_within_days)
        if status != "ok":
            who = info.identity or info.kind.value
            problems.append(f"{info.name}: {status} ({who}, expires {info.not_after:%Y-%m-%d %H:%M} UTC)")
    return problems


def begin_ca_rollover(
    ca_dir: Path, certs_dir: Path, *, lifetime_days: int = CA_LIFETIME_DAYS, now: dt.datetime | None = None
) -> Authority:
    """Replace the CA with a new one while the old one stays trusted.

    The old CA's certificate becomes ca-previous.crt (its key is deleted: it signs nothing more);
    the published trust bundle holds both. Next, re-issue every certificate (bootstrap does it for
    the cluster's) and let every peer load the bundle; then finish_ca_rollover.
    """
    if (ca_dir / PREVIOUS_CA_CERT_FILE).exists():
        raise CertificateError(
            "a CA rollover is already in progress; finish it with 'paysaga-certs ca-rollover finish'"
        )
    current = load_ca(ca_dir)  # there must be a sound CA to roll over from
    pem = current.certificate.public_bytes(serialization.Encoding.PEM)
    write_file(ca_dir / PREVIOUS_CA_CERT_FILE, pem, CERTIFICATE_MODE)
    # create_ca publishes the bundle (new CA + previous) once the new CA is written.
    return create_ca(ca_dir, certs_dir, lifetime_days=lifetime_days, force=True, now=now)


def finish_ca_rollover(ca_dir: Path, certs_dir: Path, *, force: bool = False) -> list[str]:
    """Stop trusting the previous CA; refuses while certificates it issued remain in certs_dir."""
    previous = ca_dir / PREVIOUS_CA_CERT_FILE
    if not previous.exists():
        raise CertificateError("no CA rollover in progress")
    remaining = [
        info.name for info in inventory(certs_dir)[0] if info.issued_by_previous_ca and info.kind is not Kind.CA
    ]
    if remaining and not force:
        raise CertificateError(
            f"still issued by the previous CA: {', '.join(remaining)}. Re-issue them first "
            "(paysaga-certs bootstrap, or issue --force), or pass --force to cut them off"
        )
    previous.unlink()
    publish_ca_certificate(ca_dir, certs_dir)
    return remaining


def export(certs_dir: Path, name: str, target_dir: Path, *, ca_dir: Path | None = None) -> list[Path]:
    """Copy one identity's certificate and key (and its bearer token, if it has one), with the
    trust bundle, the token public keys and the CRL (once something is revoked), into target_dir:
    what a single service's or client's host or container needs, and nothing of the others'.

    NATS's export (NATS_SERVER) also gets the keys it may accept, published afresh
    (revocation.publish_nats_pins: nats-pins.conf, which its configuration includes). With ca_dir,
    the authorization server's export (AUTHORIZATION_SERVER) also gets the token signing key from
    there (mode 0600): it signs the OAuth access tokens. No other export gets it, and the CA's own
    key is never exported."""
    check_name(name)
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    optional = [(certs_dir / f"{name}.token", PRIVATE_KEY_MODE), (certs_dir / CRL_FILE, CERTIFICATE_MODE)]
    sources = [
        (certs_dir / f"{name}.crt", CERTIFICATE_MODE),
        (certs_dir / f"{name}.key", PRIVATE_KEY_MODE),
        (certs_dir / CA_CERT_FILE, CERTIFICATE_MODE),
        (certs_dir / tokens.PUBLIC_KEYS_FILE, CERTIFICATE_MODE),
        *((path, mode) for path, mode in optional if path.exists()),
    ]
    if name == NATS_SERVER:
        revocation.publish_nats_pins(certs_dir)
        sources.append((certs_dir / revocation.NATS_PINS_FILE, CERTIFICATE_MODE))
    if name == AUTHORIZATION_SERVER and ca_dir is not None:
        sources.append((ca_dir / tokens.SIGNING_KEY_FILE, PRIVATE_KEY_MODE))
    for source, mode in sources:
        if not source.exists():
            raise CertificateError(f"{source} does not exist: run 'paysaga-certs bootstrap' first")
        write_file(target_dir / source.name, source.read_bytes(), mode)
        written.append(target_dir / source.name)
    return written


def refresh_exports(certs_dir: Path, export_dir: Path, *, ca_dir: Path | None = None) -> list[str]:
    """Export again each identity export_dir has a directory for (export_dir/<name>, as bootstrap
    --export-to makes them) and certs_dir a certificate for: after a certificate is issued or
    revoked, every one gets the CRL and its own current files, and NATS the new pins. Returns
    the names, in order."""
    if not export_dir.is_dir():
        raise CertificateError(f"{export_dir} is not a directory: nothing was exported there")
    reserved = CA_CERT_FILE.removesuffix(".crt")
    names = sorted(
        path.name
        for path in export_dir.iterdir()
        if path.is_dir() and path.name != reserved and (certs_dir / f"{path.name}.crt").exists()
    )
    for name in names:
        export(certs_dir, name, export_dir / name, ca_dir=ca_dir)
    return names


def ensure_token_signing_key(ca_dir: Path, certs_dir: Path) -> str:
    """Create the key that signs client tokens if there is none, and publish its public half."""
    if (ca_dir / tokens.SIGNING_KEY_FILE).exists():
        key, done = tokens.load_signing_key(ca_dir), "kept"
    else:
        key, done = ec.generate_private_key(ec.SECP256R1()), "created"
        ca_dir.mkdir(parents=True, exist_ok=True)
        write_file(ca_dir / tokens.SIGNING_KEY_FILE, private_pem(key), PRIVATE_KEY_MODE)
    _publish_token_keys(certs_dir, key)
    return f"{done} {tokens.signing_key_summary(ca_dir, key)}"


def rotate_token_signing_key(ca_dir: Path, certs_dir: Path) -> str:
    """A new signing key; the previous public key stays published so issued tokens keep working."""
    previous = tokens.load_signing_key(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    # Publish first, so a token signed with the new key verifies; the key still on disk stays
    # published whatever happened before (e.g. a rotation that crashed after publishing).
    _publish_token_keys(certs_dir, key, previous)
    write_file(ca_dir / tokens.SIGNING_KEY_FILE, private_pem(key), PRIVATE_KEY_MODE)
    return f"rotated: {tokens.signing_key_summary(ca_dir, key)}"


def _publish_token_keys(certs_dir: Path, *keys: ec.EllipticCurvePrivateKey) -> None:
    """Publish the keys' public halves first, then as many earlier ones as are kept."""
    path = certs_dir / tokens.PUBLIC_KEYS_FILE
    wanted = [tokens.public_jwk(key) for key in keys]
    published = tokens.read_public_keys(path)
    kids = {jwk["kid"] for jwk in wanted}
    combined = [*wanted, *(jwk for jwk in published if jwk.get("kid") not in kids)][: tokens.KEPT_PUBLIC_KEYS]
    if combined != published:
        certs_dir.mkdir(parents=True, exist_ok=True)
        tokens.publish_public_keys(path, combined)


def bootstrap(ca_dir: Path, certs_dir: Path, **options: Any) -> list[str]:
    """Everything a cluster needs, created or renewed as required: the CA, the certificates
    (see authority.ensure_certificates for options), the token signing key, and the keys NATS
    may accept (revocation.publish_nats_pins)."""
    report = ensure_certificates(ca_dir, certs_dir, **options)
    report.append(ensure_token_signing_key(ca_dir, certs_dir))
    pins = revocation.publish_nats_pins(certs_dir)
    report.append(f"published {certs_dir / revocation.NATS_PINS_FILE}: {len(pins)} keys NATS may accept")
    return report


def write_ops_token(ca_dir: Path, certs_dir: Path, client: str, *, lifetime_s: int = OPS_TOKEN_LIFETIME_S) -> str:
    """Write <certs_dir>/<client>.token, a token for an ops client with every scope for every
    service, next to its certificate, where the paysaga CLI looks by default."""
    path = certs_dir / f"{check_name(client)}.token"
    token = tokens.issue_client_token(
        ca_dir,
        client,
        services=DEFAULT_GRPC_PORTS,
        scopes=tokens.SCOPES,
        certificate=certs_dir / f"{client}.crt",
        lifetime_s=lifetime_s,
    )
    tokens.write_token_file(path, token)
    return f"wrote {path} (every scope for every service, valid {lifetime_s // 3600} h)"
