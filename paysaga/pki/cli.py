"""paysaga-certs: the operator's tool for the paysaga certificate authority.

Every connection between paysaga processes (gRPC and NATS) is mutual TLS with certificates from
this CA. A service's certificate names it twice: as DNS names (its docker-compose host name,
localhost, 127.0.0.1, ::1) for the TLS host check, and as a URI identity
spiffe://paysaga/<service> that the services use for authorization. External clients (merchant
back ends, ops tools) get client-only certificates with the identity spiffe://paysaga/client/<name>.

Typical use:

  paysaga-certs bootstrap                 # a CA and every certificate the cluster needs, if missing
  paysaga-certs issue client acme-shop    # a certificate for a new client: certs/acme-shop.{crt,key}
  paysaga-certs list                      # every certificate with its identity and expiry

Files: <dir>/ca.crt (trust anchor to give to every peer), <dir>/<name>.crt and <dir>/<name>.key
(private key, mode 0600: never copy it anywhere else than the machine that uses it). The CA's
private key, <ca-dir>/ca.key, signs new certificates; keep it off the service hosts in
production by pointing --ca-dir at a separate place.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from paysaga.pki import authority
from paysaga.pki.authority import CertificateError, CertificateInfo, Kind


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
        "--renew-within-days",
        type=int,
        default=authority.RENEW_WITHIN_DAYS,
        help="re-issue certificates expiring this soon (default: %(default)s)",
    )
    return parser


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
        elif args.command == "issue":
            info = authority.issue(
                authority.load_ca(Path(ca_dir)),
                certs_dir,
                args.name,
                Kind(args.kind),
                dns_names=args.dns,
                ip_addresses=args.ip,
                lifetime_days=args.days,
                force=args.force,
            )
            print(f"issued {info.path} and {info.path.with_suffix('.key')}: {info.summary()}")
        elif args.command == "list":
            return _list(certs_dir, as_json=args.json, warn_within_days=args.warn_days)
        else:
            for line in authority.ensure_certificates(
                Path(ca_dir),
                certs_dir,
                services=_names(args.services),
                clients=_names(args.clients),
                lifetime_days=args.days,
                renew_within_days=args.renew_within_days,
            ):
                print(line)
    except CertificateError as error:
        print(f"paysaga-certs: {error}", file=sys.stderr)
        return 2
    return 0


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
