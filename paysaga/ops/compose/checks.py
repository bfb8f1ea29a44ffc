"""What a user of the compose cluster relies on, checked for real.

From the host, only through the published 127.0.0.1 ports, with a client certificate and token
made the documented way (streamed out of the certs container): purchases that complete and that
fail with their compensation, and, with replicas, 50 purchases that all complete while one
replica of every service is killed. Accounts, stock and balances go through the ops client
inside the private network, as the README shows. An OAuth client that ops register in the
authorization server's container gets a token from its published token endpoint with curl;
payments takes that token until the client revokes it, and then refuses it on every replica.
Then that the host can reach nothing else, and that NATS refuses clients without a certificate
of ours even inside the network. Last, a revocation as ops make one: a second certificate of the
ops identity, accepted by NATS (inside the network) and by payments (from the host), is revoked
through the certs container and refused by both once NATS has reloaded, while the regular ops
certificate still gets in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import jwt
from cryptography import x509
from google.protobuf import json_format
from google.protobuf.message import Message

from paysaga.common.v1.money_pb2 import Money
from paysaga.core.identity import client_identity
from paysaga.inventory.v1 import inventory_pb2
from paysaga.ledger.v1 import ledger_pb2
from paysaga.ops.client.cli import TERMINAL
from paysaga.ops.cluster.natsconf import CONSUMES
from paysaga.ops.compose.engine import Say, run
from paysaga.ops.compose.project import SERVICES, ComposeProject, Topology
from paysaga.ops.pki import authority
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.runtime.files import write_file
from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles

CURRENCY = "EUR"
PRICE_MINOR = 1250
# Transient on the way to a replica that was just killed: the same request is sent again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
CALL_TIMEOUT_S = 10.0
# Saga timeout (30 s) plus a redelivery after a consumer died (ack wait 10 s), with room to spare.
PAYMENT_END_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.25
# The consumers' ack wait (10 s) for a redelivery after a kill, with room to spare.
STOCK_SETTLE_TIMEOUT_S = 30.0
CHAOS_PURCHASES = 50
# A NATS node killed during those purchases, started again: until it is healthy (cluster joined).
NATS_NODE_RETURN_TIMEOUT_S = 120.0
CHAOS_CONCURRENCY = 10
NATS_PROBE = Path(__file__).with_name("nats_probe.py")
# The scopes the OAuth client is registered for; its token is used for ListPayments (payments:read).
OAUTH_SCOPES = ("payments:read", "payments:write")
# Services read the authorization server's revocations every second; this is the time they are given.
REVOCATION_TIMEOUT_S = 10.0
# Calls on connections of their own per payments replica, per round: through the proxy, each
# connection may reach another replica (leastconn takes turns between idle ones).
CALLS_PER_REPLICA = 4
CURL_TIMEOUT_S = 30.0
# The second certificate of the ops identity that the revocation check issues, uses and revokes
# (paysaga-certs issue client ops --file-name ...): the regular ops certificate stays usable.
SPARE_OPS_CERTIFICATE = "compose-spare-ops"
# nats-server applies a reload at once, services re-read the CRL every 2 s: the time both are given.
CERTIFICATE_REVOCATION_TIMEOUT_S = 20.0
# Where Debian installs curl, should PATH not name /usr/bin.
CURL_FALLBACK = Path("/usr/bin/curl")
MessageT = TypeVar("MessageT", bound=Message)


class CheckFailed(Exception):
    """Something a user relies on does not hold; the message says what was expected and seen."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# -- a client on the host ------------------------------------------------------------------------


@dataclass(frozen=True)
class HostClient:
    files: TlsFiles
    token: str


def host_client_files(project: ComposeProject, directory: Path, name: str) -> TlsFiles:
    """A client certificate and key for name, with the trust bundle, streamed out of the certs
    container as the README shows (the key created 0600)."""
    project.one_off("certs", "paysaga-certs", "issue", "client", name)
    return fetched_files(project, directory, name)


def fetched_files(project: Revocations, directory: Path, name: str) -> TlsFiles:
    """The certificate and key certs/<name>.crt and .key, with the trust bundle, streamed out of the
    certs container (the key created 0600)."""
    files = TlsFiles(directory / f"{name}.crt", directory / f"{name}.key", directory / "ca.crt")
    for path, mode in (
        (files.ca_file, authority.CERTIFICATE_MODE),
        (files.cert_file, authority.CERTIFICATE_MODE),
        (files.key_file, authority.PRIVATE_KEY_MODE),
    ):
        write_file(path, project.one_off("certs", "cat", f"/certs/{path.name}").encode(), mode)
    return files


def issue_host_client(project: ComposeProject, directory: Path, name: str) -> HostClient:
    """A client certificate, key and token for payments, streamed out of the certs container as the
    README shows (the key and token created 0600)."""
    files = host_client_files(project, directory, name)
    token = project.one_off(
        "certs", "paysaga-certs", "token", "issue", name,
        "--audience", "payments", "--scope", "payments:write", "--scope", "payments:read",
    ).strip()  # fmt: skip
    return HostClient(files, token)


def status_name(payment: payments_pb2.Payment) -> str:
    return payments_pb2.PaymentStatus.Name(payment.status).removeprefix("PAYMENT_STATUS_")


def _transient(error: grpc.aio.AioRpcError) -> bool:
    """Unavailable or too slow; or (just after ops opened the accounts) payments has not heard of
    them yet, which it says in its refusal."""
    if error.code() in RETRYABLE:
        return True
    return error.code() == grpc.StatusCode.PERMISSION_DENIED and "not be known here yet" in (error.details() or "")


async def _retrying(call: Callable[[], Any], deadline: float, retries: Counter[str]) -> Any:
    """The call's result; a transient failure is retried until the deadline, any other one fails the check."""
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if not _transient(error) or time.monotonic() > deadline:
                raise CheckFailed(f"payments answered {error.code().name}: {error.details()}") from None
            retries[error.code().name] += 1
            await asyncio.sleep(POLL_INTERVAL_S)


def purchase_request(payer: str, merchant: str, sku: str, key: str) -> payments_pb2.CreatePaymentRequest:
    """One of sku at the test's price, under idempotency key."""
    return payments_pb2.CreatePaymentRequest(
        idempotency_key=key,
        payer_account_id=payer,
        merchant_account_id=merchant,
        sku=sku,
        quantity=1,
        amount=Money(amount_minor=PRICE_MINOR, currency=CURRENCY),
    )


async def purchase(
    stub: payments_pb2_grpc.PaymentServiceStub,
    payer: str,
    merchant: str,
    sku: str,
    retries: Counter[str],
    key: str | None = None,
) -> payments_pb2.Payment:
    """Buy one of sku (the same idempotency key, key or a new one, on every retry) and poll until
    the payment ends; calls sent again after a transient failure are counted in retries, by status."""
    deadline = time.monotonic() + PAYMENT_END_TIMEOUT_S
    request = purchase_request(payer, merchant, sku, key or str(uuid.uuid4()))
    created = await _retrying(lambda: stub.CreatePayment(request, timeout=CALL_TIMEOUT_S), deadline, retries)
    lookup = payments_pb2.GetPaymentRequest(payment_id=created.payment.payment_id)
    while True:
        payment: payments_pb2.Payment = await _retrying(
            lambda: stub.GetPayment(lookup, timeout=CALL_TIMEOUT_S), deadline, retries
        )
        if status_name(payment) in TERMINAL:
            return payment
        expect(
            time.monotonic() < deadline,
            f"payment {payment.payment_id} still {status_name(payment)} after {PAYMENT_END_TIMEOUT_S:.0f} s",
        )
        await asyncio.sleep(POLL_INTERVAL_S)


# -- accounts and stock, through ops ---------------------------------------------------------------


@dataclass(frozen=True)
class Shop:
    """What the ops client set up: funded wallets, a merchant, an item in stock, one out of stock."""

    wallets: tuple[str, ...]
    deposit_minor: int
    merchant: str
    sku: str
    received: int
    scarce_sku: str


class Ops(Protocol):
    def ops(self, commands: Sequence[Sequence[str]]) -> list[Any]: ...


def open_shop(project: Ops, wallets: int, deposit_minor: int, stock: int, *, buyer: str, seller: str) -> Shop:
    """By ops: wallets the client buyer owns, funded; a merchant account and items the client
    seller owns, the first one in stock."""
    run_id = uuid.uuid4().hex[:8]
    shop = Shop(
        tuple(str(uuid.uuid4()) for _ in range(wallets)),
        deposit_minor,
        str(uuid.uuid4()),
        f"mug-{run_id}",
        stock,
        f"scarce-{run_id}",
    )

    def account(account_id: str, kind: str, owner: str, client: str) -> list[str]:
        return [
            *("account", "open", "--id", account_id, "--kind", kind, "--currency", CURRENCY),
            *("--owner", owner, "--owner-client", client),
        ]

    commands = [account(shop.merchant, "merchant", "Mug shop", seller)]
    for index, wallet in enumerate(shop.wallets):
        commands += [
            account(wallet, "wallet", f"Payer {index}", buyer),
            ["account", "deposit", wallet, str(deposit_minor), CURRENCY],
        ]
    for sku in (shop.sku, shop.scarce_sku):
        commands.append(
            [
                *("item", "add", sku, "--name", "Mug", "--price", str(PRICE_MINOR), "--currency", CURRENCY),
                *("--owner-client", seller),
            ]
        )
    commands.append(["item", "receive", shop.sku, str(stock)])
    project.ops(commands)
    return shop


def _parsed(record: dict[str, Any], message: MessageT) -> MessageT:
    """A record parsed as the API's own message: a field that is renamed cannot pass as a zero."""
    try:
        return json_format.ParseDict(record, message)
    except json_format.ParseError as error:
        raise CheckFailed(f"ops printed a record that is not a {type(message).__name__}: {error}") from None


def await_stock_settled(project: Ops, shop: Shop, timeout_s: float = STOCK_SETTLE_TIMEOUT_S) -> None:
    """Wait until nothing of the item is reserved. Inventory commits a sale when it sees the
    ledger's capture, apart from payments completing the purchase; after a replica was killed, a
    capture it had not acknowledged comes again only after the ack wait (10 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [record] = project.ops([["item", "get", shop.sku]])
        if not _parsed(record, inventory_pb2.Item()).quantity_reserved:
            return
        time.sleep(POLL_INTERVAL_S)


def check_books(project: Ops, shop: Shop, payments: Iterable[payments_pb2.Payment]) -> str:
    """Money and stock agree with the payments' outcomes, exactly; nothing is left held or reserved.
    Call it once the stock has settled (await_stock_settled): money settles before a payment ends."""
    ended = list(payments)
    expect(all(status_name(p) in TERMINAL for p in ended), "a payment has not ended")
    completed = [p for p in ended if status_name(p) == "COMPLETED"]
    accounts = [*shop.wallets, shop.merchant]
    records = project.ops(
        [
            *(["account", "balance", account] for account in accounts),
            ["item", "get", shop.sku],
            ["item", "get", shop.scarce_sku],
        ]
    )
    expect(len(records) == len(accounts) + 2, f"ops printed {len(records)} records for {len(accounts) + 2} commands")
    balances = {record["account_id"]: _parsed(record, ledger_pb2.Balance()) for record in records[: len(accounts)]}
    item, scarce = (_parsed(record, inventory_pb2.Item()) for record in records[len(accounts) :])
    for wallet in shop.wallets:
        spent = sum(p.amount.amount_minor for p in completed if p.payer_account_id == wallet)
        balance = balances[wallet]
        expect(
            (balance.balance_minor, balance.held_minor) == (shop.deposit_minor - spent, 0),
            f"wallet {wallet}: expected balance {shop.deposit_minor - spent} and nothing held, got {balance}",
        )
    earned = sum(p.amount.amount_minor for p in completed)
    merchant = balances[shop.merchant]
    expect((merchant.balance_minor, merchant.held_minor) == (earned, 0), f"merchant: expected {earned}, got {merchant}")
    total = sum(balance.balance_minor for balance in balances.values())
    expect(total == shop.deposit_minor * len(shop.wallets), f"money not conserved: {total} in all accounts")
    sold = sum(p.quantity for p in completed)
    stock = (item.quantity_available, item.quantity_reserved, item.quantity_sold, item.quantity_received)
    expect(
        stock == (shop.received - sold, 0, sold, shop.received),
        f"{shop.sku}: expected {shop.received - sold} available, 0 reserved, {sold} sold, got {item}",
    )
    expect(
        (scarce.quantity_available, scarce.quantity_reserved, scarce.quantity_sold) == (0, 0, 0),
        f"{shop.scarce_sku}: expected no stock moved, got {scarce}",
    )
    outcomes = Counter(status_name(p) for p in ended)
    return (
        f"{len(ended)} payments ({', '.join(f'{count} {name}' for name, count in sorted(outcomes.items()))}); "
        f"{len(accounts)} accounts hold {total} = the deposits, none held; {shop.sku}: "
        f"{shop.received - sold} available + {sold} sold = {shop.received} received, none reserved"
    )


def check_lanes(project: Ops) -> str:
    """`paysaga lanes` from the ops container, as the README shows: every lane consumer of every
    service exists (so NATS lets each service create and read its lanes), and none holds events
    still waiting once everything has settled."""
    [rows] = project.ops([["lanes"]])
    listed: list[dict[str, Any]] = rows
    expected = {
        (service, subscription.producer, subscription.lane)
        for service, subscriptions in CONSUMES.items()
        for subscription in subscriptions
    }
    found = {(row["service"], row["producer"], row.get("lane")) for row in listed}
    expect(found == expected, f"paysaga lanes listed {sorted(map(str, found ^ expected))} unlike the services' lanes")
    waiting = {f"{row['service']}-from-{row['producer']}-{row['lane']}": row["pending"] for row in listed}
    expect(not any(waiting.values()), f"events still waiting in lanes: {waiting}")
    return f"paysaga lanes: {len(listed)} lane consumers across the services, none with events waiting"


# -- the scenarios -------------------------------------------------------------------------------


async def completed_and_compensated(
    target: str, client: HostClient, shop: Shop, say: Say
) -> list[payments_pb2.Payment]:
    """One purchase that completes, and one the ledger holds funds for and inventory then refuses
    (nothing in stock), so the hold is released: the compensation."""
    retries: Counter[str] = Counter()
    async with tls.secure_channel(target, client.files, client.token) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        wallet = shop.wallets[0]
        completed = await purchase(stub, wallet, shop.merchant, shop.sku, retries)
        expect(status_name(completed) == "COMPLETED", f"expected COMPLETED, got {completed}")
        say(f"payment {completed.payment_id}: COMPLETED")
        failed = await purchase(stub, wallet, shop.merchant, shop.scarce_sku, retries)
        expect(
            status_name(failed) == "FAILED" and "out of stock" in failed.reason,
            f"expected FAILED (out of stock), got {failed}",
        )
        say(f"payment {failed.payment_id}: FAILED ({failed.reason}); its hold was released")
    return [completed, failed]


async def purchases_through_kills(
    project: ComposeProject, target: str, client: HostClient, shop: Shop, say: Say
) -> list[payments_pb2.Payment]:
    """CHAOS_PURCHASES purchases from the host while one replica of every service (and one node of
    a NATS cluster) is killed: funds and stock suffice for all, so every one must complete."""
    kill_at = CHAOS_CONCURRENCY * 2
    started = 0
    retries: Counter[str] = Counter()

    async def one(
        index: int, stub: payments_pb2_grpc.PaymentServiceStub, gate: asyncio.Semaphore
    ) -> payments_pb2.Payment:
        nonlocal started
        async with gate:
            started += 1
            if started == kill_at:
                await asyncio.to_thread(kill_one_replica_each, project, say)
            return await purchase(stub, shop.wallets[index % len(shop.wallets)], shop.merchant, shop.sku, retries)

    async with tls.secure_channel(target, client.files, client.token) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        gate = asyncio.Semaphore(CHAOS_CONCURRENCY)
        ended = await asyncio.gather(*(one(index, stub, gate) for index in range(CHAOS_PURCHASES)))
    await asyncio.to_thread(restore_killed_nats_node, project, say)
    outcomes = Counter(status_name(p) for p in ended)
    say(f"all {len(ended)} purchases ended: {dict(outcomes)}")
    say(f"calls sent again after a transient failure: {dict(retries) or 'none'}")
    others = [f"{p.payment_id} {status_name(p)} ({p.reason})" for p in ended if status_name(p) != "COMPLETED"]
    expect(not others, f"expected every purchase to complete; these did not: {others}")
    return list(ended)


def kill_one_replica_each(project: ComposeProject, say: Say) -> None:
    """One replica of every service, and in a NATS cluster one of its nodes (the last)."""
    for service in SERVICES:
        replicas = [item["Id"] for item in project.inspect(service) if item["State"]["Running"]]
        expect(len(replicas) == project.topology.replicas, f"{service}: {len(replicas)} replicas running")
        project.kill(replicas[0])
        say(f"killed one of {len(replicas)} {service} replicas ({replicas[0][:12]})")
    nodes = project.topology.nats_nodes
    if len(nodes) > 1:
        [node] = project.inspect(nodes[-1])
        project.kill(node["Id"])
        say(f"killed NATS node {nodes[-1]} of {len(nodes)} ({node['Id'][:12]})")


def restore_killed_nats_node(project: ComposeProject, say: Say) -> None:
    """Start the NATS node kill_one_replica_each killed, and wait until it is healthy again (the
    later checks reload every node)."""
    nodes = project.topology.nats_nodes
    if len(nodes) > 1:
        project.call("up", "--wait", "--no-deps", nodes[-1], timeout_s=NATS_NODE_RETURN_TIMEOUT_S)
        say(f"NATS node {nodes[-1]} started again and healthy")


# -- an OAuth client, registered by ops ----------------------------------------------------------


@dataclass(frozen=True)
class OAuthClient:
    name: str
    files: TlsFiles


def curl_path() -> str:
    """The host's curl, the client the README shows for the token endpoint."""
    found = shutil.which("curl") or (str(CURL_FALLBACK) if CURL_FALLBACK.exists() else None)
    if found is None:
        raise CheckFailed(
            "curl is not installed on the host: the OAuth check gets and revokes its token with curl, as the "
            "README shows (apt-get install curl)"
        )
    return found


def curl_form(files: TlsFiles, url: str, *fields: str) -> tuple[int, dict[str, Any]]:
    """POST fields (NAME=value, URL-encoded) with curl over mutual TLS: the HTTP status and the JSON answer."""
    command = [curl_path(), "--silent", "--show-error", "--noproxy", "*", "--max-time", f"{CURL_TIMEOUT_S:.0f}"]
    command += ["--cacert", str(files.ca_file), "--cert", str(files.cert_file), "--key", str(files.key_file)]
    # Always a POST, even of an empty form.
    command += [argument for field in fields for argument in ("--data-urlencode", field)] or ["--data", ""]
    result = run([*command, "--write-out", "\n%{http_code}", url], timeout_s=CURL_TIMEOUT_S + 10, check=False)
    expect(result.returncode == 0, f"curl {url} failed (exit {result.returncode}): {result.stderr.strip()}")
    body, _, status = result.stdout.rpartition("\n")
    try:
        answer = json.loads(body)
    except json.JSONDecodeError:
        answer = None
    expect(isinstance(answer, dict), f"{url} answered HTTP {status} with something else than a JSON object: {body!r}")
    return int(status), answer


def register_oauth_client(project: ComposeProject, directory: Path, name: str, say: Say) -> OAuthClient:
    """As ops do: register name with the authorization server, in its container, whose environment
    names its database; then a certificate and key for the client, from the certs container."""
    scopes = [argument for scope in OAUTH_SCOPES for argument in ("--scope", scope)]
    registered = project.exec("auth", "paysaga-oauth", "register", name, *scopes).strip()
    expect(registered.startswith("registered "), f"paysaga-oauth register {name} answered: {registered!r}")
    say(f"ops: docker compose exec auth paysaga-oauth register {name} ...: {registered}")
    return OAuthClient(name, host_client_files(project, directory, name))


async def list_payments_answer(target: str, files: TlsFiles, token: str) -> tuple[grpc.StatusCode, str]:
    """ListPayments with token on a connection of its own: OK, or the refusal's code and details.
    A transient failure (a replica unavailable, too slow) is tried again, on a new connection."""
    deadline = time.monotonic() + PAYMENT_END_TIMEOUT_S
    while True:
        async with tls.secure_channel(target, files, token) as channel:
            try:
                await payments_pb2_grpc.PaymentServiceStub(channel).ListPayments(
                    payments_pb2.ListPaymentsRequest(), timeout=CALL_TIMEOUT_S
                )
                return grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRYABLE or time.monotonic() > deadline:
                    return error.code(), error.details() or ""
        await asyncio.sleep(POLL_INTERVAL_S)


def _tally(answers: Sequence[tuple[grpc.StatusCode, str]]) -> str:
    counted = Counter(f"{code.name}{f' ({details})' if details else ''}" for code, details in answers)
    return ", ".join(f"{count} {answer}" for answer, count in counted.items())


async def token_until_revoked(
    target: str, oauth_target: str, issuer: str, client: OAuthClient, replicas: int, say: Say
) -> None:
    """From the host: a token from the published token endpoint (curl, client_credentials), taken
    by payments; revoked by the client (RFC 7009), then refused by payments within
    REVOCATION_TIMEOUT_S. Each round is CALLS_PER_REPLICA calls per replica, on connections of
    their own, so that behind the proxy every replica answers."""
    calls = CALLS_PER_REPLICA * replicas
    token_url, revoke_url = (f"https://{oauth_target}/oauth2/{path}" for path in ("token", "revoke"))
    status, token = await asyncio.to_thread(curl_form, client.files, token_url, "grant_type=client_credentials")
    expect(status == 200 and token.get("token_type") == "Bearer", f"{token_url} answered HTTP {status}: {token}")
    access = str(token["access_token"])
    claims = jwt.decode(access, options={"verify_signature": False})
    expect(claims.get("iss") == issuer, f"the token's issuer is {claims.get('iss')!r}, not {issuer!r}")
    expect(claims.get("sub") == client_identity(client.name), f"the token is for {claims.get('sub')!r}")
    expect(
        set(str(token.get("scope", "")).split()) == set(OAUTH_SCOPES),
        f"expected the scopes {' '.join(OAUTH_SCOPES)}, the token has {token.get('scope')!r}",
    )
    say(
        f"curl {token_url}: HTTP 200, a Bearer token for {claims['sub']} ({token['scope']}), "
        f"iss {claims['iss']}, expires in {token.get('expires_in')} s"
    )
    answers = [await list_payments_answer(target, client.files, access) for _ in range(calls)]
    expect(
        all(code == grpc.StatusCode.OK for code, _ in answers),
        f"payments did not take the token: {_tally(answers)}",
    )
    say(f"ListPayments with it through 127.0.0.1: OK on {calls} connections of their own")
    status, body = await asyncio.to_thread(curl_form, client.files, revoke_url, f"token={access}")
    expect((status, body) == (200, {}), f"{revoke_url} answered HTTP {status}: {body}")
    revoked_at = time.monotonic()
    while True:
        answers = [await list_payments_answer(target, client.files, access) for _ in range(calls)]
        if all(code == grpc.StatusCode.UNAUTHENTICATED for code, _ in answers):
            break
        expect(
            time.monotonic() - revoked_at < REVOCATION_TIMEOUT_S,
            f"{REVOCATION_TIMEOUT_S:.0f} s after the revocation payments still answers: {_tally(answers)}",
        )
        await asyncio.sleep(POLL_INTERVAL_S)
    expect(
        all("revoked" in details for _, details in answers),
        f"payments refused the token, but not as revoked: {_tally(answers)}",
    )
    say(
        f"curl {revoke_url}: HTTP 200; {time.monotonic() - revoked_at:.1f} s later payments refuses the token on "
        f"all {calls} connections: {_tally(answers)}"
    )


class Replicas(Protocol):
    """What check_every_replica_refused needs of a compose project."""

    @property
    def topology(self) -> Topology: ...

    def inspect(self, service: str | None = None) -> list[dict[str, Any]]: ...

    def container_logs(self, container: str) -> str: ...


def json_lines(text: str) -> list[dict[str, Any]]:
    """The log records among text's lines (paysaga logs one JSON object a line)."""
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def check_every_replica_refused(project: Replicas, client: OAuthClient) -> str:
    """Every payments replica applied the client's revocation (read from AUTH_EVENTS) and refused
    its token, as its own log says: none was left out behind the proxy."""
    identity = client_identity(client.name)
    replicas = [item for item in project.inspect("payments") if item["State"]["Running"]]
    expect(len(replicas) == project.topology.replicas, f"payments: {len(replicas)} replicas running")
    for item in replicas:
        lines = json_lines(project.container_logs(item["Id"]))
        applied = any(e.get("event") == "revocations.applied" and e.get("client") == identity for e in lines)
        refused = any(
            e.get("event") == "grpc.refused" and e.get("peer") == identity and "revoked" in str(e.get("reason"))
            for e in lines
        )
        replica = item["Name"].lstrip("/")
        expect(applied, f"payments replica {replica} has not logged the revocation of {identity}'s token")
        expect(refused, f"payments replica {replica} has not logged a refusal of {identity}'s revoked token")
    which = "the payments replica" if len(replicas) == 1 else f"each of the {len(replicas)} payments replicas"
    return f"{which} logged the revocation (from AUTH_EVENTS) and its refusal of the revoked token"


# -- what is reachable -------------------------------------------------------------------------------


def check_exposure(project: ComposeProject, port: int, oauth_port: int) -> str:
    """Only the entry services publish ports: payments' (or the proxy's) and the authorization
    server's HTTPS port, only on 127.0.0.1; and the host has no address on the internal network,
    so it cannot reach the containers there at all."""
    published = sorted(project.published_ports())
    topology = project.topology
    expected = sorted([(topology.entry, "127.0.0.1", str(port)), (topology.oauth_entry, "127.0.0.1", str(oauth_port))])
    entries = (
        f"{topology.entry} on 127.0.0.1:{port} (payments) and {topology.oauth_entry} on 127.0.0.1:{oauth_port} (OAuth)"
    )
    expect(published == expected, f"expected only {entries} to be published, got {published}")
    internal = [
        network
        for item in project.inspect()
        for name, network in item["NetworkSettings"]["Networks"].items()
        if name.endswith("_internal") and network["IPAddress"]  # a stopped container has no address
    ]
    expect(bool(internal), "no container is on the internal network")
    host = host_addresses()
    for network in internal:
        address = ipaddress.ip_address(network["IPAddress"])
        subnet = ipaddress.ip_network(f"{address}/{network['IPPrefixLen']}", strict=False)
        on_host = [found for found in host if found in subnet]
        expect(not on_host, f"the host has {on_host} on the internal network {subnet}: it can reach its containers")
    return f"only {entries} are published; the host has no address on the internal network"


def host_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every IP address the host's own interfaces have."""
    listed = json.loads(run(["ip", "-json", "address"], timeout_s=30).stdout)
    return [ipaddress.ip_address(entry["local"]) for link in listed for entry in link.get("addr_info", [])]


def foreign_client() -> tuple[str, str]:
    """A client certificate and key named like ours (ops) from a CA of its own: a stranger."""
    with tempfile.TemporaryDirectory(prefix="paysaga-foreign-") as scratch:
        directory = Path(scratch)
        ca = authority.create_ca(directory, directory)
        authority.issue(ca, directory, "ops", authority.Kind.CLIENT)
        return (directory / "ops.crt").read_text(), (directory / "ops.key").read_text()


def probe_nats(project: Revocations, given: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """Run nats_probe.py in an ops container inside the private network, with the certificates and
    keys (PEM) given by name (FOREIGN, SPARE): how each way of connecting fared."""
    environment: dict[str, str] = {}
    for name, (certificate, key) in given.items():
        environment |= {f"PAYSAGA_PROBE_{name}_CERT": certificate, f"PAYSAGA_PROBE_{name}_KEY": key}
    output = project.one_off(
        "ops", "-", entrypoint="python", input_text=NATS_PROBE.read_text(), environment=environment
    )
    results: dict[str, str] = json.loads(output.strip().splitlines()[-1])
    return results


def check_nats_refuses_strangers(project: ComposeProject) -> str:
    """Inside the private network: NATS refuses plaintext, TLS without a client certificate and a
    certificate from another CA, and accepts the ops client's (so the probe itself can succeed)."""
    results = probe_nats(project, {"FOREIGN": foreign_client()})
    expect(results["tls_with_ops_certificate"] == "connected", f"the ops client could not reach NATS: {results}")
    strangers = ("plaintext", "tls_without_certificate", "tls_with_foreign_certificate")
    for way in strangers:
        expect(results[way].startswith("refused"), f"NATS did not refuse a client by {way}: {results}")
    return "NATS refuses: " + "; ".join(f"{way.replace('_', ' ')} ({results[way][9:].strip()})" for way in strangers)


# -- a revoked certificate -------------------------------------------------------------------------


class Revocations(Replicas, Protocol):
    """What check_revoked_certificate_refused needs of a compose project."""

    def one_off(
        self,
        service: str,
        *arguments: str,
        entrypoint: str | None = None,
        input_text: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> str: ...

    def signal(self, service: str, signal: str) -> None: ...


def reload_nats(project: Revocations) -> None:
    """SIGHUP every nats-server: each reads the pins again (a cluster's nodes share them)."""
    for node in project.topology.nats_nodes:
        project.signal(node, "HUP")


def nats_log(project: Revocations) -> str:
    [nats] = project.inspect("nats")
    return project.container_logs(nats["Id"])


def _pinned_counts(log: str) -> list[str]:
    """What nats-server logged at each reload that changed its pins: "Reloaded: N pinned_certs"."""
    return re.findall(r"Reloaded: (\d+) pinned_certs", log)


def _payments_answers(target: str, files: TlsFiles, token: str, calls: int) -> list[tuple[grpc.StatusCode, str]]:
    async def answers() -> list[tuple[grpc.StatusCode, str]]:
        return [await list_payments_answer(target, files, token) for _ in range(calls)]

    return asyncio.run(answers())


def check_revoked_certificate_refused(project: Revocations, target: str, directory: Path, say: Say) -> None:
    """As ops revoke a certificate in the compose cluster: a second certificate for the ops identity
    (another file, so the regular one stays usable) is issued in the certs container, which exports
    the NATS pins; once NATS has reloaded (SIGHUP), it lets that certificate in from inside the
    network, and payments takes it from the host. Then revoked in the certs container, which
    exports the CRL to every service and the shorter pins to NATS; after another reload NATS
    refuses it, as payments does (UNAUTHENTICATED, revoked) on each of CALLS_PER_REPLICA
    connections per replica, while the regular ops certificate still gets in, and neither reload
    cut a connection (nats-server logs how many it closes for their pins)."""
    name, calls = SPARE_OPS_CERTIFICATE, CALLS_PER_REPLICA * project.topology.replicas
    issued = project.one_off("certs", "paysaga-certs", "issue", "client", "ops", "--file-name", name)
    expect(_exported_to_nats(issued), f"paysaga-certs issue did not export NATS's pins:\n{issued}")
    reload_nats(project)
    files = fetched_files(project, directory, name)
    certificate = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
    expect(tls.uri_identity(certificate) == client_identity("ops"), f"{name}.crt is not an ops certificate")
    spare = (files.cert_file.read_text(), files.key_file.read_text())
    token = project.one_off(
        "certs", "paysaga-certs", "token", "issue", "ops", "--cert", f"/certs/{name}.crt",
        "--audience", "payments", "--scope", "payments:read",
    ).strip()  # fmt: skip
    results = _probe_until(project, spare, lambda found: found == "connected", "NATS lets the new ops certificate in")
    answers = _payments_answers(target, files, token, calls)
    expect(all(code == grpc.StatusCode.OK for code, _ in answers), f"payments did not take it: {_tally(answers)}")
    say(f"ops: docker compose run --rm certs paysaga-certs issue client ops --file-name {name}")
    say(f"ops: docker compose kill -s HUP {' '.join(project.topology.nats_nodes)}")
    say(
        f"with this second ops certificate (serial {certificate.serial_number:x}): NATS lets the probe in "
        f"({results['tls_with_spare_certificate']}), ListPayments through 127.0.0.1: OK on {calls} connections"
    )
    revoked = project.one_off("certs", "paysaga-certs", "revoke", name)
    expect(f"revoked serial {certificate.serial_number:x}" in revoked, f"paysaga-certs revoke answered:\n{revoked}")
    expect(_exported_to_nats(revoked), f"paysaga-certs revoke did not export NATS's pins:\n{revoked}")
    reload_nats(project)
    revoked_at = time.monotonic()
    results = _probe_until(project, spare, lambda found: found.startswith("refused"), "NATS refuses it")
    nats_refused_after = time.monotonic() - revoked_at
    expect(results["tls_with_ops_certificate"] == "connected", f"the regular ops certificate was refused: {results}")
    while True:
        answers = _payments_answers(target, files, token, calls)
        if all(code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in details for code, details in answers):
            break
        expect(
            time.monotonic() - revoked_at < CERTIFICATE_REVOCATION_TIMEOUT_S,
            f"{CERTIFICATE_REVOCATION_TIMEOUT_S:.0f} s after the revocation payments still answers: {_tally(answers)}",
        )
        time.sleep(POLL_INTERVAL_S)
    log = nats_log(project)
    expect("certificate not pinned" in log, "nats-server has not logged a refusal of the revoked certificate")
    expect(
        "due to pinned certs reload" not in log,
        "a reload of the pins closed connections (the services'?): "
        + "; ".join(line for line in log.splitlines() if "due to pinned certs reload" in line),
    )
    counts = _pinned_counts(log)
    say(f"ops: docker compose run --rm certs paysaga-certs revoke {name}  (the CRL to every volume, the pins to nats')")
    say(f"ops: docker compose kill -s HUP {' '.join(project.topology.nats_nodes)}")
    say(
        f"{nats_refused_after:.1f} s later NATS refuses it ({results['tls_with_spare_certificate'][9:].strip()}; "
        f"nats-server: certificate not pinned), payments on all {calls} connections: {_tally(answers)}"
    )
    say(
        f"the regular ops certificate still connects; nats-server's pins: {' then '.join(counts[-2:])} keys, "
        "no connection cut by either reload"
    )


def _exported_to_nats(output: str) -> bool:
    """Whether paysaga-certs said it exported again, NATS's files among them (with the pins)."""
    return re.search(r"^exported again to \S+: (.*, )?nats(,|;|$)", output, re.MULTILINE) is not None


def _probe_until(
    project: Revocations, spare: tuple[str, str], done: Callable[[str], bool], what: str
) -> dict[str, str]:
    """Probe NATS with the spare certificate until done(its outcome), for CERTIFICATE_REVOCATION_TIMEOUT_S."""
    deadline = time.monotonic() + CERTIFICATE_REVOCATION_TIMEOUT_S
    while True:
        results = probe_nats(project, {"SPARE": spare})
        if done(results["tls_with_spare_certificate"]):
            return results
        expect(time.monotonic() < deadline, f"expected: {what}; the probe found {results}")
        time.sleep(POLL_INTERVAL_S)
