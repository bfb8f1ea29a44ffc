"""paysaga: the command-line client for people who use paysaga.

Talks to the services' public gRPC APIs over mutual TLS, with the same certificates as any
client (default: certs/ops.crt, certs/ops.key, certs/ca.crt, or $PAYSAGA_TLS_CERT / _KEY / _CA),
and sends a bearer token issued to that certificate's identity: $PAYSAGA_TOKEN; else, with
--oauth-url (or $PAYSAGA_OAUTH_URL), one it gets and refreshes itself from the OAuth authorization
server with its certificate (kept in <cert>.oauth.json); else the file --token-file (default:
$PAYSAGA_TOKEN_FILE, else the certificate's path ending in .token instead of .crt, e.g.
certs/ops.token, which the local cluster writes).

  paysaga account open --kind wallet --currency EUR --owner "Ada"      # prints the new account id
  paysaga account deposit ACCOUNT_ID 5000 EUR
  paysaga item add mug-blue --name "Blue mug" --price 1250 --currency EUR
  paysaga item receive mug-blue 10
  paysaga pay --payer ID --merchant ID --sku mug-blue --quantity 1 --amount 1250 --currency EUR --wait
  paysaga payment watch PAYMENT_ID | cancel PAYMENT_ID | refund PAYMENT_ID | get | list
  paysaga account balance ACCOUNT_ID | statement ACCOUNT_ID ;  paysaga item get SKU | list
  paysaga lanes                    # each lane's backlog on NATS (--nats-url, $PAYSAGA_NATS_URL)
  paysaga rules check FILE | backtest FILE --since 24h ;  paysaga decisions [--action block ...]
  paysaga review list | approve PAYMENT_ID | decline PAYMENT_ID --reason "..."
  paysaga trace PAYMENT_ID [--html FILE]   # its events across the services, from NATS, with the gaps

Human-readable output by default, --json (before the command) for scripts. Exit status: 0 on
success, 1 when the service refused the request (the gRPC status and message are printed), 2 on
a usage error; `pay --wait` exits 3 when the payment ended in any status other than COMPLETED.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from paysaga.common.v1.money_pb2 import Money
from paysaga.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.ops.client import oauth, trace
from paysaga.ops.client import rules as rules_cli
from paysaga.ops.client.healthcheck import default_client_tls
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.runtime.security import tls
from paysaga.runtime.security.tokens import read_token_file
from paysaga.runtime.settings import DEFAULT_GRPC_PORTS, DEFAULT_NATS_URL, TlsFiles

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "REJECTED", "REFUNDED"}
TIMEOUT_S = 10.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paysaga", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    for service in ("payments", "inventory", "ledger"):
        port = DEFAULT_GRPC_PORTS[service]
        variable = f"PAYSAGA_{service.upper()}_TARGET"
        parser.add_argument(
            f"--{service}",
            default=os.environ.get(variable, f"127.0.0.1:{port}"),
            help=f"host:port, or several comma-separated to spread calls over replicas (env {variable})",
        )
    defaults = default_client_tls()
    parser.add_argument(
        "--cert", type=Path, default=defaults.cert_file, help="client certificate (default: %(default)s)"
    )
    parser.add_argument("--key", type=Path, default=defaults.key_file, help="client key (default: %(default)s)")
    parser.add_argument("--ca", type=Path, default=defaults.ca_file, help="CA certificate (default: %(default)s)")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=Path(os.environ["PAYSAGA_TOKEN_FILE"]) if os.environ.get("PAYSAGA_TOKEN_FILE") else None,
        help="bearer token file (default: the --cert path with .token; $PAYSAGA_TOKEN wins)",
    )
    parser.add_argument(
        "--oauth-url",
        default=os.environ.get("PAYSAGA_OAUTH_URL", ""),
        help="the authorization server (e.g. https://127.0.0.1:8443) to get the token from (env PAYSAGA_OAUTH_URL)",
    )
    areas = parser.add_subparsers(dest="area", required=True, metavar="COMMAND")

    account = areas.add_parser("account", help="ledger accounts").add_subparsers(dest="action", required=True)
    opened = account.add_parser("open", help="open a wallet or merchant account")
    opened.add_argument("--id", default=None, help="account id (default: a new UUID)")
    opened.add_argument("--kind", choices=["wallet", "merchant"], required=True)
    opened.add_argument("--currency", required=True)
    opened.add_argument("--owner", required=True, help="free text naming the owner (a person, a shop)")
    opened.add_argument(
        "--owner-client", default="", help="ops only: the client (name) that owns the account (default: the caller)"
    )
    deposit = account.add_parser("deposit", help="fund an account")
    deposit.add_argument("account_id")
    deposit.add_argument("amount_minor", type=int)
    deposit.add_argument("currency")
    deposit.add_argument("--deposit-id", default=None, help="makes a retry safe (default: a new UUID)")
    account.add_parser("balance", help="balance, held and available").add_argument("account_id")
    statement = account.add_parser("statement", help="every change of an account")
    statement.add_argument("account_id")
    statement.add_argument("--page-size", type=int, default=0)
    statement.add_argument("--page-token", default="")

    item = areas.add_parser("item", help="inventory").add_subparsers(dest="action", required=True)
    added = item.add_parser("add", help="add a SKU")
    added.add_argument("sku")
    added.add_argument("--name", required=True)
    added.add_argument("--price", type=int, required=True, help="unit price in minor units")
    added.add_argument("--currency", required=True)
    added.add_argument(
        "--owner-client", default="", help="ops only: the client (name) that sells the item (default: the caller)"
    )
    received = item.add_parser("receive", help="receive stock")
    received.add_argument("sku")
    received.add_argument("quantity", type=int)
    received.add_argument("--receipt-id", default=None, help="makes a retry safe (default: a new UUID)")
    item.add_parser("get", help="stock levels of a SKU").add_argument("sku")
    item.add_parser("list", help="every SKU")

    pay = areas.add_parser("pay", help="start a purchase")
    pay.add_argument("--payer", required=True)
    pay.add_argument("--merchant", required=True)
    pay.add_argument("--sku", required=True)
    pay.add_argument("--quantity", type=int, default=1)
    pay.add_argument("--amount", type=int, required=True, help="total in minor units")
    pay.add_argument("--currency", required=True)
    pay.add_argument("--tier", choices=["standard", "priority", "critical"], default="standard")
    pay.add_argument("--region", default="", help="ISO 3166-1 alpha-2 country of the purchase, e.g. FR (optional)")
    pay.add_argument("--idempotency-key", default=None, help="reuse to retry safely (default: a new UUID)")
    pay.add_argument("--wait", action="store_true", help="follow the payment until it ends")

    payment = areas.add_parser("payment", help="payments").add_subparsers(dest="action", required=True)
    for name, text in (("get", "one payment"), ("watch", "follow a payment until it ends")):
        payment.add_parser(name, help=text).add_argument("payment_id")
    for name, text in (("cancel", "cancel before completion"), ("refund", "refund after completion")):
        action = payment.add_parser(name, help=text)
        action.add_argument("payment_id")
        action.add_argument("--reason", default="")
    listing = payment.add_parser("list", help="payments, oldest first")
    listing.add_argument("--payer", default="")
    listing.add_argument("--merchant", default="")
    listing.add_argument("--status", default="", help="e.g. COMPLETED")
    listing.add_argument("--page-size", type=int, default=0)
    listing.add_argument("--page-token", default="")

    rules_cli.add_commands(areas)

    lanes = areas.add_parser("lanes", help="each service's lanes: backlog, unacknowledged, oldest event (from NATS)")
    traced = areas.add_parser("trace", help="one payment's events across the services, with the time between them")
    traced.add_argument("payment_id")
    traced.add_argument(
        "--html", metavar="FILE", type=Path, help="write the timeline as an HTML page to FILE instead of printing it"
    )
    for command in (lanes, traced):
        command.add_argument(
            "--nats-url",
            default=os.environ.get("PAYSAGA_NATS_URL", DEFAULT_NATS_URL),
            help="NATS server URL(s), comma-separated (env PAYSAGA_NATS_URL, default %(default)s)",
        )
    return parser


class Output:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def show(self, message: Message, text: str) -> None:
        if self.as_json:
            print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None), flush=True)
        else:
            print(text, flush=True)


def money(value: Money) -> str:
    return f"{value.amount_minor} {value.currency} (minor units)"


def describe_payment(payment: payments_pb2.Payment) -> str:
    status = payments_pb2.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")
    reason = f"  reason: {payment.reason}" if payment.reason else ""
    region = f" from {payment.region}" if payment.region else ""
    return (
        f"payment {payment.payment_id} {status}  {payment.quantity} x {payment.sku}, {money(payment.amount)}"
        f"{region}{reason}"
    )


def describe_item(item: inventory_pb2.Item) -> str:
    return (
        f"{item.sku} ({item.name}): available {item.quantity_available}, reserved {item.quantity_reserved}, "
        f"sold {item.quantity_sold}, received {item.quantity_received}; unit price {money(item.unit_price)}"
    )


def describe_balance(balance: ledger_pb2.Balance) -> str:
    return (
        f"account {balance.account_id}: balance {balance.balance_minor}, held {balance.held_minor}, "
        f"available {balance.available_minor} {balance.currency} (minor units)"
    )


async def run(args: argparse.Namespace) -> int:
    out = Output(args.json)
    if args.area == "lanes":
        # Imported here: knowing every lane means importing every service's handlers (most of a
        # second), which no other command needs.
        from paysaga.ops.client import lanes as lane_report

        rows = await lane_report.read_lanes(args.nats_url, TlsFiles(args.cert, args.key, args.ca))
        print(lane_report.as_json(rows) if args.json else lane_report.as_text(rows), flush=True)
        return 0
    if args.area == "rules" and args.action == "check":
        status, text = rules_cli.check(args.file)
        print(text, file=sys.stdout if status == 0 else sys.stderr, flush=True)
        return status
    target = {"account": args.ledger, "item": args.inventory}.get(args.area, args.payments)
    async with tls.secure_channel(target, TlsFiles(args.cert, args.key, args.ca), _token(args)) as channel:
        if args.area == "trace":
            return await _trace(payments_pb2_grpc.PaymentServiceStub(channel), args)
        if args.area in ("rules", "decisions", "review"):
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            return await rules_cli.run(args, stub, out, describe_payment)
        if args.area == "account":
            return await _account(ledger_pb2_grpc.LedgerServiceStub(channel), args, out)
        if args.area == "item":
            return await _item(inventory_pb2_grpc.InventoryServiceStub(channel), args, out)
        return await _payment(payments_pb2_grpc.PaymentServiceStub(channel), args, out)


def _token(args: argparse.Namespace) -> str | None:
    """$PAYSAGA_TOKEN, else one from the authorization server, else the token file if there is one;
    without any the service says what is missing."""
    if os.environ.get("PAYSAGA_TOKEN"):
        return os.environ["PAYSAGA_TOKEN"].strip()
    if args.oauth_url:
        return oauth.access_token(args.oauth_url, TlsFiles(args.cert, args.key, args.ca))
    if args.token_file is not None:
        if not args.token_file.exists():
            raise ValueError(f"token file {args.token_file} does not exist")
        return read_token_file(args.token_file)
    default = args.cert.with_suffix(".token")
    return read_token_file(default) if default.exists() else None


async def _account(stub: ledger_pb2_grpc.LedgerServiceStub, args: argparse.Namespace, out: Output) -> int:
    if args.action == "open":
        account = await stub.OpenAccount(
            ledger_pb2.OpenAccountRequest(
                account_id=args.id or str(uuid.uuid4()),
                kind=ledger_pb2.AccountKind.Value(f"ACCOUNT_KIND_{args.kind.upper()}"),
                currency=args.currency,
                owner=args.owner,
                owner_client=args.owner_client,
            ),
            timeout=TIMEOUT_S,
        )
        out.show(account, account.account_id)
    elif args.action == "deposit":
        deposited = await stub.Deposit(
            ledger_pb2.DepositRequest(
                account_id=args.account_id,
                amount=Money(amount_minor=args.amount_minor, currency=args.currency),
                deposit_id=args.deposit_id or str(uuid.uuid4()),
            ),
            timeout=TIMEOUT_S,
        )
        out.show(deposited, describe_balance(deposited.balance) + (" (replayed)" if deposited.replayed else ""))
    elif args.action == "balance":
        balance = await stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id=args.account_id), timeout=TIMEOUT_S)
        out.show(balance, describe_balance(balance))
    else:
        statement = await stub.GetStatement(
            ledger_pb2.GetStatementRequest(
                account_id=args.account_id, page_size=args.page_size, page_token=args.page_token
            ),
            timeout=TIMEOUT_S,
        )
        lines = [
            f"{line.occurred_at.ToDatetime():%Y-%m-%d %H:%M:%S}  "
            f"{ledger_pb2.EntryKind.Name(line.kind).removeprefix('ENTRY_KIND_'):<8} {line.amount_minor:>12}  "
            f"balance {line.balance_after_minor:>12}  held {line.held_after_minor:>10}  {line.description}"
            for line in statement.lines
        ]
        more = [f"next page: --page-token {statement.next_page_token}"] if statement.next_page_token else []
        out.show(
            statement,
            "\n".join([f"statement of {statement.account_id} ({statement.currency}, minor units)", *lines, *more]),
        )
    return 0


async def _item(stub: inventory_pb2_grpc.InventoryServiceStub, args: argparse.Namespace, out: Output) -> int:
    if args.action == "list":
        listed = await stub.ListItems(inventory_pb2.ListItemsRequest(), timeout=TIMEOUT_S)
        out.show(listed, "\n".join(describe_item(item) for item in listed.items) or "no items")
        return 0
    if args.action == "add":
        request: Any = inventory_pb2.AddItemRequest(
            sku=args.sku,
            name=args.name,
            unit_price=Money(amount_minor=args.price, currency=args.currency),
            owner_client=args.owner_client,
        )
        item = await stub.AddItem(request, timeout=TIMEOUT_S)
    elif args.action == "receive":
        request = inventory_pb2.ReceiveStockRequest(
            sku=args.sku, quantity=args.quantity, receipt_id=args.receipt_id or str(uuid.uuid4())
        )
        item = await stub.ReceiveStock(request, timeout=TIMEOUT_S)
    else:
        item = await stub.GetItem(inventory_pb2.GetItemRequest(sku=args.sku), timeout=TIMEOUT_S)
    out.show(item, describe_item(item))
    return 0


async def _payment(stub: payments_pb2_grpc.PaymentServiceStub, args: argparse.Namespace, out: Output) -> int:
    if args.area == "pay":
        created = await stub.CreatePayment(
            payments_pb2.CreatePaymentRequest(
                idempotency_key=args.idempotency_key or str(uuid.uuid4()),
                payer_account_id=args.payer,
                merchant_account_id=args.merchant,
                sku=args.sku,
                quantity=args.quantity,
                amount=Money(amount_minor=args.amount, currency=args.currency),
                sla_tier=payments_pb2.SlaTier.Value(f"SLA_TIER_{args.tier.upper()}"),
                region=args.region,
            ),
            timeout=TIMEOUT_S,
        )
        if not args.wait:
            out.show(created, describe_payment(created.payment) + (" (replayed)" if created.replayed else ""))
            return 0
        final = await _watch(stub, created.payment.payment_id, out)
        return 0 if final == "COMPLETED" else 3
    if args.action == "watch":
        await _watch(stub, args.payment_id, out)
    elif args.action == "get":
        payment = await stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=args.payment_id), timeout=TIMEOUT_S)
        out.show(payment, describe_payment(payment))
    elif args.action == "cancel":
        request: Any = payments_pb2.CancelPaymentRequest(payment_id=args.payment_id, reason=args.reason)
        payment = await stub.CancelPayment(request, timeout=TIMEOUT_S)
        out.show(payment, describe_payment(payment))
    elif args.action == "refund":
        request = payments_pb2.RefundPaymentRequest(payment_id=args.payment_id, reason=args.reason)
        payment = await stub.RefundPayment(request, timeout=TIMEOUT_S)
        out.show(payment, describe_payment(payment))
    else:
        status = payments_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{args.status.upper()}") if args.status else 0
        listed = await stub.ListPayments(
            payments_pb2.ListPaymentsRequest(
                payer_account_id=args.payer,
                merchant_account_id=args.merchant,
                status=status,  # type: ignore[arg-type]
                page_size=args.page_size,
                page_token=args.page_token,
            ),
            timeout=TIMEOUT_S,
        )
        more = [f"next page: --page-token {listed.next_page_token}"] if listed.next_page_token else []
        out.show(
            listed, "\n".join([*(describe_payment(payment) for payment in listed.payments), *more]) or "no payments"
        )
    return 0


async def _trace(stub: payments_pb2_grpc.PaymentServiceStub, args: argparse.Namespace) -> int:
    payment = await stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id=args.payment_id), timeout=TIMEOUT_S)
    status = payments_pb2.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")
    since = payment.created_at.ToDatetime(dt.UTC) - trace.CLOCK_SLACK
    files = TlsFiles(args.cert, args.key, args.ca)
    timeline = trace.steps(await trace.saga_events(args.nats_url, files, payment.payment_id, since))
    if args.html is not None:
        try:
            args.html.write_text(trace.as_html(payment.payment_id, status, timeline), encoding="utf-8")
        except OSError as error:  # a usage error: main reports it and exits 2
            raise ValueError(f"could not write {args.html}: {error.strerror or error}") from error
        print(f"wrote {args.html}", flush=True)
        return 0
    show = trace.as_json if args.json else trace.as_text
    print(show(payment.payment_id, status, timeline), flush=True)
    return 0


async def _watch(stub: payments_pb2_grpc.PaymentServiceStub, payment_id: str, out: Output) -> str:
    status = ""
    async for update in stub.WatchPayment(payments_pb2.WatchPaymentRequest(payment_id=payment_id)):
        out.show(update, describe_payment(update.payment))
        status = payments_pb2.PaymentStatus.Name(update.payment.status).removeprefix("PAYMENT_STATUS_")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # What fails is reported once, below; the libraries' own warnings (a NATS connect retry, a TLS
    # close) would only repeat it, or are noise.
    logging.basicConfig(level=logging.ERROR, format="paysaga: %(message)s")
    try:
        return asyncio.run(run(args))
    except tls.TlsConfigurationError as error:
        print(f"paysaga: {error}", file=sys.stderr)
        return 2
    except oauth.TokenUnavailable as error:
        print(f"paysaga: {error}", file=sys.stderr)
        return 1
    except ConnectionError as error:
        print(f"paysaga: {error}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as error:
        print(f"paysaga: {error.code().name}: {error.details()}", file=sys.stderr)
        if error.code() == grpc.StatusCode.UNAUTHENTICATED and args.oauth_url and not os.environ.get("PAYSAGA_TOKEN"):
            oauth.forget(TlsFiles(args.cert, args.key, args.ca))
            print("paysaga: dropped the cached token; the next command gets a new one", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"paysaga: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
