"""The CA script as an operator uses it: create a CA, issue, list with expiry, refuse to overwrite."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from paysaga.ops.cluster import natsconf
from paysaga.ops.pki import authority, cli, revocation, rotation
from paysaga.ops.pki.authority import CertificateError, Kind
from paysaga.ops.pki.cli import main as certs_main
from paysaga.runtime.security import tokens
from paysaga.runtime.security.revocation import CRL_FILE
from paysaga.runtime.settings import TlsFiles

REPO = Path(__file__).resolve().parents[2]


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ops-facing script in scripts/ exactly as an operator would."""
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "paysaga-certs"), *args], capture_output=True, text=True, check=False
    )


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_ca_creates_a_ca_certificate_and_a_private_key_only_the_owner_can_read(tmp_path: Path) -> None:
    result = run_script("--dir", str(tmp_path), "init-ca")

    assert result.returncode == 0, result.stderr
    ca = load(tmp_path / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert ca.subject == ca.issuer
    assert mode(tmp_path / "ca.key") == 0o600
    assert mode(tmp_path / "ca.crt") == 0o644


def test_init_ca_refuses_to_replace_an_existing_ca_unless_forced(tmp_path: Path) -> None:
    assert run_script("--dir", str(tmp_path), "init-ca").returncode == 0
    original_key = (tmp_path / "ca.key").read_bytes()

    refused = run_script("--dir", str(tmp_path), "init-ca")

    assert refused.returncode == 2
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert (tmp_path / "ca.key").read_bytes() == original_key

    forced = run_script("--dir", str(tmp_path), "init-ca", "--force")

    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "ca.key").read_bytes() != original_key


def test_service_certificate_has_dns_ip_and_spiffe_identity_with_server_and_client_usage(tmp_path: Path) -> None:
    assert run_script("--dir", str(tmp_path), "init-ca").returncode == 0

    result = run_script("--dir", str(tmp_path), "issue", "service", "payments", "--dns", "payments.internal")

    assert result.returncode == 0, result.stderr
    certificate = load(tmp_path / "payments.crt")
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://paysaga/payments"]
    assert set(names.get_values_for_type(x509.DNSName)) == {"payments", "localhost", "payments.internal"}
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    certificate.verify_directly_issued_by(load(tmp_path / "ca.crt"))
    assert mode(tmp_path / "payments.key") == 0o600


def test_client_certificate_has_client_usage_only_and_a_client_identity(tmp_path: Path) -> None:
    assert run_script("--dir", str(tmp_path), "init-ca").returncode == 0

    assert run_script("--dir", str(tmp_path), "issue", "client", "acme-shop").returncode == 0

    certificate = load(tmp_path / "acme-shop.crt")
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://paysaga/client/acme-shop"]
    assert list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert mode(tmp_path / "acme-shop.key") == 0o600


def test_private_keys_are_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "sh",
            "-c",
            f'umask 000 && "{sys.executable}" "{REPO / "scripts" / "paysaga-certs"}" --dir "{tmp_path}" bootstrap',
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    keys = sorted(tmp_path.glob("*.key"))
    assert [key.name for key in keys] == [
        "auth.key",
        "ca.key",
        "inventory.key",
        "ledger.key",
        "nats.key",
        "ops.key",
        "payments.key",
        "reconcile.key",
        "token-signing.key",
    ]
    assert all(mode(key) == 0o600 for key in keys)
    assert not list(tmp_path.glob(".*.tmp")), "no temporary files are left behind"


def test_issue_refuses_to_overwrite_an_existing_certificate_unless_forced(tmp_path: Path) -> None:
    assert run_script("--dir", str(tmp_path), "init-ca").returncode == 0
    assert run_script("--dir", str(tmp_path), "issue", "service", "ledger").returncode == 0
    original = (tmp_path / "ledger.crt").read_bytes()

    refused = run_script("--dir", str(tmp_path), "issue", "service", "ledger")

    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (tmp_path / "ledger.crt").read_bytes() == original
    assert run_script("--dir", str(tmp_path), "issue", "service", "ledger", "--force").returncode == 0
    assert (tmp_path / "ledger.crt").read_bytes() != original


def test_issue_without_a_ca_explains_how_to_create_one(tmp_path: Path) -> None:
    result = run_script("--dir", str(tmp_path), "issue", "client", "acme")

    assert result.returncode == 2
    assert "init-ca" in result.stderr
    assert not (tmp_path / "acme.crt").exists()


@pytest.mark.parametrize("name", ["", "Payments", "pay ments", "../etc", "-lead", "trail-", "x" * 64])
def test_issue_rejects_names_that_are_not_dns_labels(tmp_path: Path, name: str) -> None:
    ca = authority.create_ca(tmp_path, tmp_path)

    with pytest.raises(CertificateError, match="invalid name"):
        authority.issue(ca, tmp_path, name, Kind.CLIENT)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


def test_list_shows_every_certificate_with_identity_and_expiry(tmp_path: Path) -> None:
    assert run_script("--dir", str(tmp_path), "bootstrap").returncode == 0

    result = run_script("--dir", str(tmp_path), "list", "--json")

    assert result.returncode == 0, result.stderr
    listed = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert set(listed) == {"ca", "nats", "payments", "inventory", "ledger", "auth", "reconcile", "ops"}
    assert listed["ledger"]["identity"] == "spiffe://paysaga/ledger"
    assert listed["ops"]["kind"] == "client"
    assert listed["ca"]["kind"] == "ca"
    expiry = dt.datetime.fromisoformat(listed["payments"]["not_after"])
    assert listed["payments"]["days_left"] == (expiry - dt.datetime.now(dt.UTC)).days
    assert authority.LEAF_LIFETIME_DAYS - 2 <= listed["payments"]["days_left"] <= authority.LEAF_LIFETIME_DAYS
    assert all(entry["status"] == "ok" for entry in listed.values())

    table = run_script("--dir", str(tmp_path), "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "KIND", "IDENTITY"]
    assert any(line.startswith("payments") and "spiffe://paysaga/payments" in line for line in table)


def test_list_marks_expiring_expired_and_foreign_certificates(tmp_path: Path) -> None:
    ca = authority.create_ca(tmp_path, tmp_path)
    now = authority.utc_now()
    authority.issue(ca, tmp_path, "soon", Kind.CLIENT, lifetime_days=5)
    authority.issue(ca, tmp_path, "old", Kind.CLIENT, lifetime_days=1, now=now - dt.timedelta(days=3))
    other = authority.create_ca(tmp_path / "other", tmp_path / "other")
    authority.issue(other, tmp_path, "stranger", Kind.CLIENT)

    statuses = {info.name: info.status(now, warn_within_days=14) for info in authority.inventory(tmp_path)[0]}

    assert statuses == {"ca": "ok", "soon": "expiring", "old": "expired", "stranger": "not from this CA"}


def test_bootstrap_is_idempotent_and_renews_only_what_needs_it(tmp_path: Path) -> None:
    first = authority.ensure_certificates(tmp_path, tmp_path)
    assert first[0].startswith("created CA") and all(line.startswith("issued") for line in first[1:])
    ledger_before = (tmp_path / "ledger.crt").read_bytes()
    ca = authority.load_ca(tmp_path)
    authority.issue(ca, tmp_path, "payments", Kind.SERVICE, lifetime_days=3, force=True)

    second = authority.ensure_certificates(tmp_path, tmp_path)

    assert second[0].startswith("kept CA")
    assert [line.split(" (")[0] for line in second if line.startswith("issued")] == ["issued service payments"]
    assert "(expiring)" in next(line for line in second if "payments" in line)
    assert (tmp_path / "ledger.crt").read_bytes() == ledger_before


def test_bootstrap_keeps_the_ca_key_in_its_own_directory_when_asked(tmp_path: Path) -> None:
    certs, ca_dir = tmp_path / "certs", tmp_path / "ca"

    assert certs_main(["--dir", str(certs), "--ca-dir", str(ca_dir), "bootstrap"]) == 0

    assert (ca_dir / "ca.key").exists() and not (certs / "ca.key").exists()
    assert (certs / "ca.crt").read_bytes() == (ca_dir / "ca.crt").read_bytes()
    load(certs / "payments.crt").verify_directly_issued_by(load(certs / "ca.crt"))


def test_keys_are_p256_and_match_their_certificates(certs_dir: Path) -> None:
    for name in ("payments", "ops"):
        info = authority.describe(certs_dir / f"{name}.crt", load(certs_dir / "ca.crt"))
        assert authority.needs_issuing(info, certs_dir / f"{name}.key", authority.utc_now(), 14) is None
        public_key = load(certs_dir / f"{name}.crt").public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"


def test_help_explains_the_commands_to_an_operator() -> None:
    result = run_script("--help")

    assert result.returncode == 0
    for words in ("bootstrap", "issue", "list", "init-ca", "0600", "spiffe://paysaga/"):
        assert words in result.stdout


def test_the_name_ca_is_reserved_so_the_ca_cannot_be_overwritten_by_a_leaf(tmp_path: Path) -> None:
    assert run_script("--dir", str(tmp_path), "init-ca").returncode == 0
    ca_before = (tmp_path / "ca.crt").read_bytes()

    refused = run_script("--dir", str(tmp_path), "issue", "client", "ca", "--force")

    assert refused.returncode == 2 and "reserved" in refused.stderr
    assert (tmp_path / "ca.crt").read_bytes() == ca_before


def test_a_leaf_certificate_is_not_accepted_as_the_ca(tmp_path: Path) -> None:
    ca = authority.create_ca(tmp_path, tmp_path)
    authority.issue(ca, tmp_path, "mallory", Kind.SERVICE)
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    (impostor / "ca.crt").write_bytes((tmp_path / "mallory.crt").read_bytes())
    (impostor / "ca.key").write_bytes((tmp_path / "mallory.key").read_bytes())

    with pytest.raises(CertificateError, match="not a CA certificate and its key"):
        authority.load_ca(impostor)


@pytest.mark.parametrize("dns", ["bad name!", "-lead.example", "a..b"])
def test_issue_rejects_invalid_extra_dns_names(tmp_path: Path, dns: str) -> None:
    ca = authority.create_ca(tmp_path, tmp_path)

    with pytest.raises(CertificateError, match="invalid DNS name"):
        authority.issue(ca, tmp_path, "payments", Kind.SERVICE, dns_names=[dns])


def test_an_unreadable_certificate_is_reported_by_list_and_replaced_by_bootstrap(tmp_path: Path) -> None:
    assert run_script("--dir", str(tmp_path), "bootstrap").returncode == 0
    (tmp_path / "ledger.crt").write_text("this is not a certificate")

    listed = run_script("--dir", str(tmp_path), "list")
    bootstrapped = run_script("--dir", str(tmp_path), "bootstrap")

    assert listed.returncode == 0
    assert "ledger.crt is not a readable PEM certificate" in listed.stderr
    assert "issued service ledger (missing)" in bootstrapped.stdout
    load(tmp_path / "ledger.crt").verify_directly_issued_by(load(tmp_path / "ca.crt"))


def test_check_exits_non_zero_and_names_certificates_near_expiry(tmp_path: Path) -> None:
    assert certs_main(["--dir", str(tmp_path), "bootstrap"]) == 0
    assert run_script("--dir", str(tmp_path), "check").returncode == 0
    ca = authority.load_ca(tmp_path)
    authority.issue(ca, tmp_path, "ledger", Kind.SERVICE, lifetime_days=3, force=True)

    result = run_script("--dir", str(tmp_path), "check")

    assert result.returncode == 1
    assert result.stdout.startswith("ledger: expiring (spiffe://paysaga/ledger, expires ")
    assert run_script("--dir", str(tmp_path), "check", "--warn-days", "2").returncode == 0


def test_ca_rollover_trusts_both_cas_until_every_certificate_is_reissued(tmp_path: Path) -> None:
    certs, ca_dir = tmp_path / "certs", tmp_path / "ca"
    assert certs_main(["--dir", str(certs), "--ca-dir", str(ca_dir), "bootstrap"]) == 0
    old_ca = load(certs / "ca.crt")

    assert certs_main(["--dir", str(certs), "--ca-dir", str(ca_dir), "ca-rollover", "begin"]) == 0
    bundle = x509.load_pem_x509_certificates((certs / "ca.crt").read_bytes())
    assert [certificate.subject for certificate in bundle] == [old_ca.subject] * 2
    assert bundle[1] == old_ca and bundle[0] != old_ca
    assert certs_main(["--dir", str(certs), "--ca-dir", str(ca_dir), "ca-rollover", "finish"]) == 2  # not yet

    assert certs_main(["--dir", str(certs), "--ca-dir", str(ca_dir), "bootstrap"]) == 0
    # Everything re-issued: monitoring has nothing to report while both CAs are trusted.
    assert certs_main(["--dir", str(certs), "--ca-dir", str(ca_dir), "check"]) == 0
    assert certs_main(["--dir", str(certs), "--ca-dir", str(ca_dir), "ca-rollover", "finish"]) == 0

    assert x509.load_pem_x509_certificates((certs / "ca.crt").read_bytes()) == [bundle[0]]
    load(certs / "payments.crt").verify_directly_issued_by(bundle[0])


def test_export_gives_one_identity_its_own_files_only(tmp_path: Path) -> None:
    certs, export = tmp_path / "certs", tmp_path / "export"
    assert certs_main(["--dir", str(certs), "bootstrap", "--client-tokens", "--export-to", str(export)]) == 0

    exported = sorted(path.name for path in (export / "payments").iterdir())

    assert exported == ["ca.crt", "payments.crt", "payments.key", "token-keys.json"]
    assert mode(export / "payments" / "payments.key") == 0o600
    assert sorted(path.name for path in export.iterdir()) == [
        *("auth", "inventory", "ledger", "nats", "ops", "payments", "reconcile")
    ]
    # The ops client gets its own key and its token, with every scope, and nothing of the services'.
    assert sorted(path.name for path in (export / "ops").iterdir()) == [
        "ca.crt",
        "ops.crt",
        "ops.key",
        "ops.token",
        "token-keys.json",
    ]
    assert mode(export / "ops" / "ops.token") == 0o600
    claims = jwt.decode(tokens.read_token_file(export / "ops" / "ops.token"), options={"verify_signature": False})
    assert claims["sub"] == "spiffe://paysaga/client/ops" and set(claims["scope"].split()) == set(tokens.SCOPES)


def test_only_the_authorization_servers_export_gets_the_token_signing_key_and_none_the_cas(tmp_path: Path) -> None:
    certs, ca_dir, export = tmp_path / "certs", tmp_path / "ca", tmp_path / "export"
    where = ["--dir", str(certs), "--ca-dir", str(ca_dir)]
    assert certs_main([*where, "bootstrap", "--client-tokens", "--export-to", str(export)]) == 0

    signing_key = export / "auth" / tokens.SIGNING_KEY_FILE
    assert sorted(path.name for path in (export / "auth").iterdir()) == [
        "auth.crt",
        "auth.key",
        "ca.crt",
        "token-keys.json",
        tokens.SIGNING_KEY_FILE,
    ]
    assert signing_key.read_bytes() == (ca_dir / tokens.SIGNING_KEY_FILE).read_bytes()
    assert mode(signing_key) == 0o600
    # The key it signs with is the one whose public half every service trusts.
    published = {jwk["kid"] for jwk in tokens.read_public_keys(export / "auth" / tokens.PUBLIC_KEYS_FILE)}
    assert tokens.public_jwk(tokens.load_signing_key(export / "auth"))["kid"] in published
    # No other identity gets it, and nobody gets the CA's key.
    holders = {path.parent.name for path in export.rglob(tokens.SIGNING_KEY_FILE)}
    assert holders == {"auth"}
    assert not list(export.rglob(authority.CA_KEY_FILE))
    # Exporting the authorization server alone, as an operator would for its host, gives it the key too.
    assert certs_main([*where, "export", "auth", "--to", str(tmp_path / "a")]) == 0
    assert certs_main([*where, "export", "ledger", "--to", str(tmp_path / "l")]) == 0
    assert (tmp_path / "a" / tokens.SIGNING_KEY_FILE).read_bytes() == signing_key.read_bytes()
    assert not (tmp_path / "l" / tokens.SIGNING_KEY_FILE).exists()


def test_token_issue_prints_a_token_for_a_client_identity(tmp_path: Path) -> None:
    assert certs_main(["--dir", str(tmp_path), "bootstrap"]) == 0
    assert certs_main(["--dir", str(tmp_path), "issue", "client", "acme-shop"]) == 0

    result = run_script(
        *("--dir", str(tmp_path), "token", "issue", "acme-shop"),
        *("--audience", "payments", "--scope", "payments:write", "--out", str(tmp_path / "acme-shop.token")),
    )

    assert result.returncode == 0, result.stderr
    assert mode(tmp_path / "acme-shop.token") == 0o600
    verifier = tokens.TokenVerifier(tmp_path / tokens.PUBLIC_KEYS_FILE, audience=tokens.audience_of("payments"))
    claims = verifier.verify((tmp_path / "acme-shop.token").read_text().strip())
    assert claims.subject == "spiffe://paysaga/client/acme-shop" and claims.scopes == {"payments:write"}
    # Bound to acme-shop's certificate: usable with it and no other.
    assert claims.certificate_thumbprint == tokens.certificate_file_thumbprint(tmp_path / "acme-shop.crt")


# -- revocation for nats-server: the pins file the compose clusters' NATS includes ------------------


def pin_of(path: Path) -> str:
    return revocation.public_key_pin(load(path))


def pins_in(path: Path) -> list[str]:
    """The keys a nats-pins.conf lists, as nats-server would read them (a JSON list after pinned_certs:)."""
    text = path.read_text()
    assert text.count("pinned_certs: [") == 1
    listed: list[str] = json.loads(text[text.index("[") :])
    return listed


def test_bootstrap_publishes_the_keys_nats_may_accept_and_revoke_takes_one_out(tmp_path: Path) -> None:
    assert certs_main(["--dir", str(tmp_path), "bootstrap"]) == 0
    pins_file = tmp_path / revocation.NATS_PINS_FILE
    cluster = ("nats", "payments", "inventory", "ledger", "auth", "ops")
    assert {pin_of(tmp_path / f"{name}.crt") for name in cluster} <= set(pins_in(pins_file))
    assert pins_in(pins_file) == sorted(pins_in(pins_file))

    assert certs_main(["--dir", str(tmp_path), "revoke", "ops"]) == 0

    assert pin_of(tmp_path / "ops.crt") not in pins_in(pins_file)
    assert pin_of(tmp_path / "payments.crt") in pins_in(pins_file)
    # Issuing something new keeps the revoked key out (the CRL is read at every publication).
    assert certs_main(["--dir", str(tmp_path), "issue", "client", "acme-shop"]) == 0
    assert pin_of(tmp_path / "ops.crt") not in pins_in(pins_file)
    assert pin_of(tmp_path / "acme-shop.crt") in pins_in(pins_file)


def test_a_rotation_keeps_the_replaced_key_pinned_until_it_is_revoked_by_serial(tmp_path: Path) -> None:
    """As NatsPins does for the local cluster: a rotation must not cut the connections made with the
    certificate it replaces; revoking that certificate (no longer on disk) does."""
    assert certs_main(["--dir", str(tmp_path), "bootstrap"]) == 0
    old_pin, old_serial = pin_of(tmp_path / "ledger.crt"), revocation.serial_of(tmp_path / "ledger.crt")

    assert certs_main(["--dir", str(tmp_path), "issue", "service", "ledger", "--force"]) == 0
    assert {old_pin, pin_of(tmp_path / "ledger.crt")} <= set(pins_in(tmp_path / revocation.NATS_PINS_FILE))
    assert certs_main(["--dir", str(tmp_path), "bootstrap"]) == 0  # a later run remembers it too
    assert old_pin in pins_in(tmp_path / revocation.NATS_PINS_FILE)

    assert certs_main(["--dir", str(tmp_path), "revoke", "--serial", f"{old_serial:x}"]) == 0

    assert old_pin not in pins_in(tmp_path / revocation.NATS_PINS_FILE)
    assert pin_of(tmp_path / "ledger.crt") in pins_in(tmp_path / revocation.NATS_PINS_FILE)


def test_issue_force_revoke_old_pins_the_new_key_and_drops_the_old_one(tmp_path: Path) -> None:
    assert certs_main(["--dir", str(tmp_path), "bootstrap"]) == 0
    old_pin = pin_of(tmp_path / "payments.crt")

    assert certs_main(["--dir", str(tmp_path), "issue", "service", "payments", "--force", "--revoke-old"]) == 0

    pins = pins_in(tmp_path / revocation.NATS_PINS_FILE)
    assert old_pin not in pins and pin_of(tmp_path / "payments.crt") in pins


def test_the_keys_of_expired_certificates_are_forgotten(tmp_path: Path) -> None:
    rotation.bootstrap(tmp_path, tmp_path)
    ops_pin = pin_of(tmp_path / "ops.crt")
    later = authority.utc_now() + dt.timedelta(days=authority.LEAF_LIFETIME_DAYS + 1)

    pins = revocation.publish_nats_pins(tmp_path, now=later)

    assert ops_pin not in pins and pins_in(tmp_path / revocation.NATS_PINS_FILE) == list(pins)
    remembered = json.loads((tmp_path / revocation.NATS_KEYS_FILE).read_text())
    assert ops_pin not in {entry["pin"] for entry in remembered.values()}


def test_the_pins_are_rewritten_only_when_they_change(tmp_path: Path) -> None:
    rotation.bootstrap(tmp_path, tmp_path)
    files = [tmp_path / revocation.NATS_PINS_FILE, tmp_path / revocation.NATS_KEYS_FILE]
    before = [path.stat().st_ino for path in files]

    revocation.publish_nats_pins(tmp_path)

    assert [path.stat().st_ino for path in files] == before
    assert all(mode(path) == authority.CERTIFICATE_MODE for path in files)


def test_an_unreadable_record_of_keys_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    rotation.bootstrap(tmp_path, tmp_path)
    (tmp_path / revocation.NATS_KEYS_FILE).write_text("{not json")

    with pytest.raises(CertificateError, match="delete it to start afresh"):
        revocation.publish_nats_pins(tmp_path)
    assert certs_main(["--dir", str(tmp_path), "revoke", "ops"]) == 2


def test_exports_carry_the_crl_and_nats_its_pins(tmp_path: Path) -> None:
    certs, export = tmp_path / "certs", tmp_path / "export"
    assert certs_main(["--dir", str(certs), "bootstrap", "--export-to", str(export)]) == 0
    assert sorted(path.name for path in (export / "nats").iterdir()) == [
        "ca.crt",
        revocation.NATS_PINS_FILE,
        "nats.crt",
        "nats.key",
        "token-keys.json",
    ]
    assert not list(export.rglob(revocation.NATS_KEYS_FILE)) and not list(export.rglob(CRL_FILE))
    assert [path.parent.name for path in export.rglob(revocation.NATS_PINS_FILE)] == ["nats"]
    assert certs_main(["--dir", str(certs), "revoke", "ops"]) == 0

    assert certs_main(["--dir", str(certs), "export", "payments", "--to", str(tmp_path / "p")]) == 0
    assert certs_main(["--dir", str(certs), "export", "nats", "--to", str(tmp_path / "n")]) == 0

    assert (tmp_path / "p" / CRL_FILE).read_bytes() == (certs / CRL_FILE).read_bytes()
    assert not (tmp_path / "p" / revocation.NATS_PINS_FILE).exists()
    assert pin_of(certs / "ops.crt") not in pins_in(tmp_path / "n" / revocation.NATS_PINS_FILE)


@pytest.mark.parametrize("given", ["option", "environment"])
def test_revoke_exports_again_the_crl_to_every_identity_and_the_pins_to_nats(
    tmp_path: Path, given: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the compose certs job does (PAYSAGA_EXPORT_DIR): one command, and every container's
    volume has the CRL, NATS's the shorter pins; nats-server must still be told to reload."""
    certs, ca_dir, export = tmp_path / "certs", tmp_path / "ca", tmp_path / "export"
    where = ["--dir", str(certs), "--ca-dir", str(ca_dir)]
    assert certs_main([*where, "bootstrap", "--client-tokens", "--export-to", str(export)]) == 0
    (export / "postgres").mkdir()  # a mount point with no certificate behind it: left alone
    ops_pin = pin_of(certs / "ops.crt")
    assert ops_pin in pins_in(export / "nats" / revocation.NATS_PINS_FILE)
    capsys.readouterr()
    if given == "environment":
        monkeypatch.setenv(cli.EXPORT_DIR_VARIABLE, str(export))

    assert certs_main([*where, "revoke", "ops", *(["--export-to", str(export)] if given == "option" else [])]) == 0

    output = capsys.readouterr().out
    names = ["auth", "inventory", "ledger", "nats", "ops", "payments", "reconcile"]
    assert f"exported again to {export}: {', '.join(names)}; reload nats-server" in output
    assert "docker compose kill -s HUP nats" in output
    for name in names:
        assert (export / name / CRL_FILE).read_bytes() == (certs / CRL_FILE).read_bytes(), name
    assert ops_pin not in pins_in(export / "nats" / revocation.NATS_PINS_FILE)
    assert pin_of(certs / "payments.crt") in pins_in(export / "nats" / revocation.NATS_PINS_FILE)
    assert list((export / "postgres").iterdir()) == []
    # The authorization server's export keeps its signing key; no export gets the CA's.
    assert (export / "auth" / tokens.SIGNING_KEY_FILE).exists() and not list(export.rglob(authority.CA_KEY_FILE))


def test_revoke_without_an_export_directory_touches_no_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certs, export = tmp_path / "certs", tmp_path / "export"
    monkeypatch.delenv(cli.EXPORT_DIR_VARIABLE, raising=False)
    assert certs_main(["--dir", str(certs), "bootstrap", "--export-to", str(export)]) == 0

    assert certs_main(["--dir", str(certs), "revoke", "ops"]) == 0

    assert not list(export.rglob(CRL_FILE))
    assert pin_of(certs / "ops.crt") in pins_in(export / "nats" / revocation.NATS_PINS_FILE)
    assert certs_main(["--dir", str(certs), "revoke", "ledger", "--export-to", str(tmp_path / "nowhere")]) == 2


def test_a_second_certificate_for_an_identity_is_revoked_on_its_own(tmp_path: Path) -> None:
    assert certs_main(["--dir", str(tmp_path), "bootstrap"]) == 0
    ops_before = (tmp_path / "ops.crt").read_bytes()

    assert certs_main(["--dir", str(tmp_path), "issue", "client", "ops", "--file-name", "ops-ada"]) == 0

    spare = authority.describe(tmp_path / "ops-ada.crt", load(tmp_path / "ca.crt"))
    assert spare.identity == "spiffe://paysaga/client/ops" and spare.kind is Kind.CLIENT and spare.name == "ops-ada"
    assert mode(tmp_path / "ops-ada.key") == 0o600
    assert (tmp_path / "ops.crt").read_bytes() == ops_before
    assert pin_of(tmp_path / "ops-ada.crt") in pins_in(tmp_path / revocation.NATS_PINS_FILE)
    # A token bound to it works with it.
    token = tokens.issue_client_token(
        tmp_path, "ops", services=["payments"], scopes=["payments:read"], certificate=tmp_path / "ops-ada.crt"
    )
    verifier = tokens.TokenVerifier(tmp_path / tokens.PUBLIC_KEYS_FILE, audience=tokens.audience_of("payments"))
    assert verifier.verify(token).certificate_thumbprint == tokens.certificate_file_thumbprint(tmp_path / "ops-ada.crt")

    assert certs_main(["--dir", str(tmp_path), "revoke", "ops-ada"]) == 0

    assert set(revocation.revoked_serials(tmp_path)) == {revocation.serial_of(tmp_path / "ops-ada.crt")}
    pins = pins_in(tmp_path / revocation.NATS_PINS_FILE)
    assert pin_of(tmp_path / "ops-ada.crt") not in pins and pin_of(tmp_path / "ops.crt") in pins
    assert certs_main(["--dir", str(tmp_path), "issue", "client", "ops", "--file-name", "ops-ada"]) == 2  # no --force
    assert certs_main(["--dir", str(tmp_path), "issue", "client", "ops", "--file-name", "ca", "--force"]) == 2


def test_the_help_says_how_to_revoke_in_the_compose_cluster() -> None:
    result = run_script("--help")

    assert "docker compose run --rm certs paysaga-certs revoke NAME" in result.stdout
    assert "docker compose kill -s HUP nats" in result.stdout
    assert "nats-pins.conf" in result.stdout and "PAYSAGA_EXPORT_DIR" in result.stdout


def test_with_no_key_to_accept_nats_lets_nobody_in_rather_than_everybody(tmp_path: Path) -> None:
    """nats-server takes an empty pinned_certs for no pinning at all."""
    rotation.bootstrap(tmp_path, tmp_path)
    every = [revocation.serial_of(path) for path in tmp_path.glob("*.crt")]

    revocation.revoke(tmp_path, tmp_path, every)

    assert revocation.publish_nats_pins(tmp_path) == ()
    assert pins_in(tmp_path / revocation.NATS_PINS_FILE) == [revocation.NO_KEY_PIN]
    rendered = natsconf.render(
        server_name="x", host="127.0.0.1", port=4222, tls=TlsFiles.in_directory(tmp_path, "nats"),
        store_dir=tmp_path, pinned_keys=[],
    )  # fmt: skip
    assert f'pinned_certs: ["{revocation.NO_KEY_PIN}"]' in rendered
