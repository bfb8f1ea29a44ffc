"""paysaga-certs: the operator's tool for the paysaga certificate authority.

Every connection between paysaga processes (gRPC and NATS) is mutual TLS with certificates from
this CA. A service's certificate names it twice: as DNS names (its docker-compose host name,
localhost, 127.0.0.1, ::1) for the TLS host check, and as a URI identity
spiffe://paysaga/<service> that the services use for authorization. External clients (merchant
back ends, ops tools) get client-only certificates with the identity spiffe://paysaga/client/<name>.

Typical use:

  paysaga-certs bootstrap                 # CA, cluster certificates, token signing key: what is missing or expiring
  paysaga-certs bootstrap --client-tokens # ... and a fresh 24 h token for the ops client: certs/ops.token
  paysaga-certs bootstrap --export-to DIR # ... and each identity's own files in DIR/<name>/; DIR/auth also gets
                                          # the token signing key (the authorization server signs tokens with it)
  paysaga-certs issue client acme-shop    # a certificate for a new client: certs/acme-shop.{crt,key}
  paysaga-certs token issue acme-shop --audience payments --scope payments:write --scope payments:read
  paysaga-certs list                      # every certificate with its identity and expiry
  paysaga-certs check                     # exit 1 when a certificate expires soon (for monitoring)
  paysaga-certs issue service payments --force   # rotation: servers pick the new one up without restart
  paysaga-certs revoke acme-shop          # refuse certs/acme-shop.crt from now on (certs/crl.pem, certs/nats-pins.conf)
  paysaga-certs issue client acme-shop --force --revoke-old   # a new one, and the old one refused
  paysaga-certs issue client ops --file-name ops-ada   # another certificate for an identity, revocable on its own
  paysaga-certs ca-rollover begin | finish       # replace the CA; both are trusted in between

Files: <dir>/ca.crt (trust anchor to give to every peer), <dir>/<name>.crt and <dir>/<name>.key
(private key, mode 0600: never copy it anywhere else than the machine that uses it). The CA's
private key, <ca-dir>/ca.key, signs new certificates; keep it off the service hosts in
production by pointing --ca-dir at a separate place. The token signing key,
<ca-dir>/token-signing.key, goes to one more place only: the authorization server (auth), whose
export (bootstrap --export-to, export auth) carries it, mode 0600; it is never exported with
any other identity, and ca.key never at all.

Revocation: gRPC servers and the token endpoint read <dir>/crl.pem (within 2 s of a change).
nats-server reads no CRL; it accepts only the keys in <dir>/nats-pins.conf, which its
configuration includes: every certificate key seen in <dir> until its certificate expires (a
rotation cuts no connection; <dir>/nats-keys.json remembers them), minus those of revoked
certificates. issue, revoke, bootstrap and export write it afresh; nats-server reads it again when
it reloads, and a shorter list closes the connections whose key left it. Every export carries
crl.pem (once something is revoked), nats' export nats-pins.conf too. With --export-to DIR (default
$PAYSAGA_EXPORT_DIR), issue and revoke export again every identity DIR holds a directory for, so
each container gets the new CRL and nats the new pins; the docker-compose "certs" job sets
PAYSAGA_EXPORT_DIR, so revoking there takes two commands:

  docker compose run --rm certs paysaga-certs revoke NAME   # crl.pem to every volume, the pins to nats'
  docker compose kill -s HUP nats                            # NATS reloads: NAME is refused, its connections closed
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from paysaga.ops.pki import authority, revocation, rotation
from paysaga.ops.pki.authority import CertificateError, CertificateInfo, Kind
from paysaga.runtime.security import tokens
from paysaga.runtime.security.ratelimit import Limit, parse_limits
from paysaga.runtime.settings import DEFAULT_GRPC_PORTS

# Where bootstrap, issue and revoke export to when --export-to is not given (the compose "certs" job sets it).
EXPORT_DIR_VARIABLE = "PAYSAGA_EXPORT_DIR"
REFRESH_HELP = (
    "after issuing or revoking, export again every identity DIR holds a directory for (as bootstrap --export-to "
    f"made them): the new CRL to each, the new NATS pins to DIR/nats (default: ${EXPORT_DIR_VARIABLE})"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paysaga-certs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("PAYSAGA_CERTS_DIR", "certs")),
        help="where certificates and keys are written and read (default: $PAYSAGA_CERTS_DIR or ./certs)",
    )
    parser.add_argument(
        "--ca-dir",
        type=Path,
        default=os.environ.get("PAYSAGA_CA_DIR"),
        help="where the CA's private key lives (default: $PAYSAGA_CA_DIR or the same as --dir)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser("init-ca", help="create a new CA (refuses to replace an existing one)")
    init.add_argument("--days", type=int, default=authority.CA_LIFETIME_DAYS, help="lifetime (default: %(default)s)")
    init.add_argument("--common-name", default="paysaga root CA", help="the CA's subject name")
    init.add_argument(
        "--force", action="store_true", help="replace an existing CA; every issued certificate stops working"
    )

    issue = commands.add_parser("issue", help="issue a certificate for a service or an external client")
    issue.add_argument(
        "kind",
        choices=[Kind.SERVICE.value, Kind.CLIENT.value],
        help="service: server+client usage; client: client usage only",
    )
    issue.add_argument("name", help="e.g. payments, or the client's name such as acme-shop")
    issue.add_argument("--dns", action="append", default=[], metavar="NAME", help="an extra DNS name (repeatable)")
    issue.add_argument("--ip", action="append", default=[], metavar="ADDRESS", help="an extra IP address (repeatable)")
    issue.add_argument("--days", type=int, default=authority.LEAF_LIFETIME_DAYS, help="lifetime (default: %(default)s)")
    issue.add_argument("--force", action="store_true", help="re-issue even if the certificate exists (rotation)")
    issue.add_argument(
        "--revoke-old",
        action="store_true",
        help="with --force: revoke the certificate this one replaces (e.g. its key may have leaked)",
    )
    issue.add_argument(
        "--file-name",
        default=None,
        metavar="FILE",
        help="write <dir>/FILE.crt and FILE.key instead of NAME.crt and NAME.key: another certificate for the "
        "identity NAME (e.g. one per ops workstation), which revoke FILE refuses without touching the others",
    )
    _export_option(issue, REFRESH_HELP)

    revoke = commands.add_parser(
        "revoke",
        help="stop accepting a certificate: published in <dir>/crl.pem (gRPC: refused within seconds) and "
        "<dir>/nats-pins.conf (NATS: refused once nats-server reloads)",
    )
    revoke.add_argument("name", nargs="?", help="the certificate <dir>/NAME.crt")
    revoke.add_argument("--serial", default=None, help="or its serial number in hex (for one no longer on disk)")
    _export_option(revoke, REFRESH_HELP)

    listing = commands.add_parser("list", help="show every certificate with its identity and expiry")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "--warn-days",
        type=int,
        default=authority.RENEW_WITHIN_DAYS,
        help="mark certificates expiring within this many days (default: %(default)s)",
    )

    bootstrap = commands.add_parser(
        "bootstrap",
        help="make sure the CA and the cluster's certificates exist and are valid "
        "(issues only what is missing, expiring or from another CA)",
    )
    bootstrap.add_argument(
        "--services", default=",".join(authority.CLUSTER_SERVICES), help="comma-separated (default: %(default)s)"
    )
    bootstrap.add_argument(
        "--clients", default=",".join(authority.CLUSTER_CLIENTS), help="comma-separated (default: %(default)s)"
    )
    bootstrap.add_argument(
        "--days",
        type=int,
        default=authority.LEAF_LIFETIME_DAYS,
        help="lifetime of new certificates (default: %(default)s)",
    )
    bootstrap.add_argument(
        "--dns",
        action="append",
        type=_extra_names,
        default=[],
        metavar="SERVICE=NAME[,NAME]",
        help="extra DNS names for a service's certificate, e.g. nats=nats-2,nats-3 for every node of a NATS "
        "cluster; a certificate without them is issued again (repeatable)",
    )
    bootstrap.add_argument(
        "--renew-within-days",
        type=int,
        default=authority.RENEW_WITHIN_DAYS,
        help="re-issue certificates expiring this soon (default: %(default)s)",
    )
    _export_option(
        bootstrap,
        "also copy each service's and client's certificate, key (and token), trust bundle, token keys and CRL "
        f"into DIR/<name>/, so each host or container is given its own key only; DIR/{authority.AUTHORIZATION_SERVER}"
        " also gets the token signing key (mode 0600), which the authorization server signs access tokens with, "
        f"DIR/{authority.NATS_SERVER} the keys NATS may accept (nats-pins.conf) (default: ${EXPORT_DIR_VARIABLE})",
    )
    bootstrap.add_argument(
        "--client-tokens",
        action="store_true",
        help="also write <dir>/<client>.token for each of --clients: a bearer token with every scope for every "
        f"service, valid {rotation.OPS_TOKEN_LIFETIME_S // 3600} h (for ops clients; run bootstrap again to renew)",
    )
    check = commands.add_parser(
        "check", help="exit 1 (and say which) if a certificate is expiring, expired or not from the current CA"
    )
    check.add_argument(
        "--warn-days",
        type=int,
        default=authority.RENEW_WITHIN_DAYS,
        help="a certificate expiring within this many days is a problem (default: %(default)s)",
    )

    rollover = commands.add_parser("ca-rollover", help="replace the CA without downtime")
    rollover.add_argument(
        "step",
        choices=["begin", "finish"],
        help="begin: new CA, old one still trusted; then re-issue everything (bootstrap); finish: drop the old CA",
    )
    rollover.add_argument("--days", type=int, default=authority.CA_LIFETIME_DAYS, help="new CA's lifetime")
    rollover.add_argument("--force", action="store_true", help="finish even if certificates of the old CA remain")

    export = commands.add_parser(
        "export",
        help="copy one identity's certificate, key, trust bundle and token keys to a directory "
        f"(for {authority.AUTHORIZATION_SERVER}, the authorization server, the token signing key too)",
    )
    export.add_argument("name")
    export.add_argument("--to", type=Path, required=True, dest="target", help="target directory")

    token_key = commands.add_parser("token-key", help="the key that signs client tokens")
    token_key.add_argument(
        "action", choices=["init", "rotate"], help="init: create if missing; rotate: new key, old one still verifies"
    )

    token = commands.add_parser("token", help="client bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    token_issue = token_commands.add_parser("issue", help="print a signed token for a client certificate's identity")
    token_issue.add_argument("name", help="the client's certificate name, e.g. acme-shop (identity .../client/NAME)")
    token_issue.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=tokens.SCOPES,
        help="what the token allows (repeatable)",
    )
    token_issue.add_argument(
        "--audience",
        action="append",
        required=True,
        choices=list(DEFAULT_GRPC_PORTS),
        help="the service the token is for (repeatable)",
    )
    token_issue.add_argument(
        "--ttl-s", type=int, default=tokens.DEFAULT_LIFETIME_S, help="lifetime in seconds (default: %(default)s)"
    )
    token_issue.add_argument("--issuer", default=tokens.DEFAULT_ISSUER, help="iss claim (default: %(default)s)")
    token_issue.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        metavar="CLASS=RATE/BURST",
        help="the client's own limit for a class of calls (read, write, admin), per service process, instead of "
        "the services' defaults; repeatable, e.g. --rate-limit write=20/40",
    )
    token_issue.add_argument(
        "--cert",
        type=Path,
        default=None,
        help="the client certificate the token is bound to (default: <dir>/NAME.crt); the token works with it only",
    )
    token_issue.add_argument(
        "--out", type=Path, default=None, help="write the token to this file (mode 0600) instead of printing it"
    )
    return parser


def _export_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument(
        "--export-to",
        type=Path,
        default=os.environ.get(EXPORT_DIR_VARIABLE) or None,
        metavar="DIR",
        help=help_text,
    )


def _refresh_exports(certs_dir: Path, ca_dir: Path, export_dir: Path | None) -> None:
    """After an issue or a revocation: the NATS pins written afresh and, with an export directory,
    every identity exported there exported again (the CRL to each, the pins to nats')."""
    revocation.publish_nats_pins(certs_dir)
    if export_dir is None:
        return
    names = rotation.refresh_exports(certs_dir, export_dir, ca_dir=ca_dir)
    print(
        f"exported again to {export_dir}: {', '.join(names) or 'nothing (no identity exported there)'}"
        + (
            f"; reload nats-server for its new pins (docker compose kill -s HUP {authority.NATS_SERVER})"
            if authority.NATS_SERVER in names
            else ""
        )
    )


def _extra_names(text: str) -> tuple[str, list[str]]:
    service, separator, names = text.partition("=")
    if not separator or not service or not names:
        raise argparse.ArgumentTypeError(f"expected SERVICE=NAME[,NAME], got {text!r}")
    return service, [name for name in names.split(",") if name]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    certs_dir: Path = args.dir
    ca_dir: Path = args.ca_dir if args.ca_dir is not None else certs_dir
    try:
        if args.command == "init-ca":
            created = authority.create_ca(
                Path(ca_dir), certs_dir, common_name=args.common_name, lifetime_days=args.days, force=args.force
            )
            print(
                f"created CA {certs_dir / authority.CA_CERT_FILE} (key {Path(ca_dir) / authority.CA_KEY_FILE}), "
                f"valid until {created.certificate.not_valid_after_utc:%Y-%m-%d}"
            )
        elif args.command == "revoke":
            if (args.name is None) == (args.serial is None):
                raise CertificateError("name the certificate, or give --serial, not both")
            serial = int(args.serial, 16) if args.serial else revocation.serial_of(certs_dir / f"{args.name}.crt")
            path = revocation.revoke(Path(ca_dir), certs_dir, [serial])
            print(
                f"revoked serial {serial:x}: {path} lists {len(revocation.revoked_serials(certs_dir))} certificate(s); "
                f"{certs_dir / revocation.NATS_PINS_FILE} no longer lists its key"
            )
            _refresh_exports(certs_dir, Path(ca_dir), args.export_to)
        elif args.command == "issue":
            old_serial = None
            certificate_file = certs_dir / f"{args.file_name or args.name}.crt"
            if args.revoke_old and certificate_file.exists():
                old_serial = revocation.serial_of(certificate_file)
            info = authority.issue(
                authority.load_ca(Path(ca_dir)),
                certs_dir,
                args.name,
                Kind(args.kind),
                dns_names=args.dns,
                ip_addresses=args.ip,
                lifetime_days=args.days,
                force=args.force,
                file_name=args.file_name,
            )
            print(f"issued {info.path} and {info.path.with_suffix('.key')}: {info.summary()}")
            if old_serial is not None:
                revocation.revoke(Path(ca_dir), certs_dir, [old_serial])
                print(f"revoked the certificate it replaces (serial {old_serial:x})")
            _refresh_exports(certs_dir, Path(ca_dir), args.export_to)
        elif args.command == "list":
            return _list(certs_dir, as_json=args.json, warn_within_days=args.warn_days)
        elif args.command == "check":
            return _check(certs_dir, args.warn_days)
        elif args.command == "ca-rollover":
            _rollover(Path(ca_dir), certs_dir, args.step, days=args.days, force=args.force)
        elif args.command == "export":
            for path in rotation.export(certs_dir, args.name, args.target, ca_dir=Path(ca_dir)):
                print(f"wrote {path}")
        elif args.command == "token-key":
            if args.action == "init":
                print(rotation.ensure_token_signing_key(Path(ca_dir), certs_dir))
            else:
                print(rotation.rotate_token_signing_key(Path(ca_dir), certs_dir))
        elif args.command == "token":
            _issue_token(Path(ca_dir), certs_dir, args)
        else:
            for line in rotation.bootstrap(
                Path(ca_dir),
                certs_dir,
                services=_names(args.services),
                clients=_names(args.clients),
                lifetime_days=args.days,
                renew_within_days=args.renew_within_days,
                dns_names=dict(args.dns),
            ):
                print(line)
            if args.client_tokens:
                for name in _names(args.clients):
                    print(rotation.write_ops_token(Path(ca_dir), certs_dir, name))
            if args.export_to is not None:
                for name in _names(args.services) + _names(args.clients):
                    rotation.export(certs_dir, name, args.export_to / name, ca_dir=Path(ca_dir))
                    print(f"exported {name} to {args.export_to / name}")
    except (CertificateError, tokens.TokenError) as error:
        print(f"paysaga-certs: {error}", file=sys.stderr)
        return 2
    return 0


def _check(certs_dir: Path, warn_within_days: int) -> int:
    problems = rotation.expiry_problems(certs_dir, authority.utc_now(), warn_within_days)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"every certificate in {certs_dir} is valid for more than {warn_within_days} days")
    return 1 if problems else 0


def _rollover(ca_dir: Path, certs_dir: Path, step: str, *, days: int, force: bool) -> None:
    if step == "begin":
        created = rotation.begin_ca_rollover(ca_dir, certs_dir, lifetime_days=days)
        print(
            f"new CA valid until {created.certificate.not_valid_after_utc:%Y-%m-%d}; {certs_dir / 'ca.crt'} now "
            "trusts the old and the new CA. Next: wait until every process has reloaded the bundle, re-issue "
            "every certificate (paysaga-certs bootstrap; issue --force for clients), then: ca-rollover finish"
        )
        return
    cut_off = rotation.finish_ca_rollover(ca_dir, certs_dir, force=force)
    print(f"{certs_dir / 'ca.crt'} now trusts only the current CA")
    if cut_off:
        print(f"no longer trusted: {', '.join(cut_off)}")


def _own_limits(given: Sequence[str]) -> dict[str, Limit]:
    try:
        everything = parse_limits(",".join(given))
    except ValueError as error:
        raise tokens.TokenError(str(error)) from None
    named = {part.partition("=")[0].strip() for part in given}
    return {name: limit for name, limit in everything.items() if name in named}


def _issue_token(ca_dir: Path, certs_dir: Path, args: argparse.Namespace) -> None:
    token = tokens.issue_client_token(
        ca_dir,
        args.name,
        services=args.audience,
        scopes=args.scope,
        certificate=args.cert or certs_dir / f"{args.name}.crt",
        lifetime_s=args.ttl_s,
        issuer=args.issuer,
        rate_limits=_own_limits(args.rate_limit),
    )
    if args.out is None:
        print(token)
        return
    tokens.write_token_file(args.out, token)
    print(f"wrote {args.out} (mode 0600), valid for {args.ttl_s} s")


def _list(certs_dir: Path, *, as_json: bool, warn_within_days: int) -> int:
    if not certs_dir.is_dir():
        raise CertificateError(f"{certs_dir} does not exist: run 'paysaga-certs bootstrap' first")
    now = authority.utc_now()
    infos, unreadable = authority.inventory(certs_dir)
    for path in unreadable:
        print(f"paysaga-certs: {path} is not a readable PEM certificate (bootstrap re-issues it)", file=sys.stderr)
    if as_json:
        print(json.dumps([_as_dict(info, now, warn_within_days) for info in infos], indent=2))
        return 0
    header = ("NAME", "KIND", "IDENTITY", "EXPIRES (UTC)", "DAYS LEFT", "STATUS")
    rows = [header] + [
        (
            info.name,
            info.kind.value,
            info.identity or "-",
            f"{info.not_after:%Y-%m-%d %H:%M}",
            str(info.days_left(now)),
            info.status(now, warn_within_days),
        )
        for info in infos
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _as_dict(info: CertificateInfo, now: datetime.datetime, warn_within_days: int) -> dict[str, object]:
    return {
        "name": info.name,
        "path": str(info.path),
        "kind": info.kind.value,
        "identity": info.identity,
        "dns_names": list(info.dns_names),
        "ip_addresses": list(info.ip_addresses),
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "days_left": info.days_left(now),
        "status": info.status(now, warn_within_days),
    }


def _names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


if __name__ == "__main__":
    sys.exit(main())
