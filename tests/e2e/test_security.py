"""The negative matrix against the running services and the real nats-server: every refusal a
user relies on, each next to the same call succeeding when nothing is wrong, and nothing changed
by a refused call."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import grpc
import nats.errors
import pytest

from paysaga.common.v1.money_pb2 import Money
from paysaga.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.ops.pki import authority
from paysaga.ops.pki.authority import Kind
from paysaga.runtime.settings import TlsFiles
from tests import badcerts
from tests.e2e.shop import Shop
from tests.helpers import client_token, connect_as, eventually, secure_channel, wait_for_log

pytestmark = pytest.mark.e2e
DEPOSIT_MINOR = 700


@pytest.fixture(scope="module")
def bad_certificates(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> dict[str, TlsFiles]:
    return badcerts.make(certs_dir, tmp_path_factory.mktemp("bad-certs"))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory, certs_dir: Path) -> TlsFiles:
    """A valid client certificate from our CA for an identity with no rights anywhere."""
    directory = tmp_path_factory.mktemp("stranger")
    authority.issue(authority.load_ca(certs_dir), directory, "acme-shop", Kind.CLIENT)
    (directory / "ca.crt").write_bytes((certs_dir / "ca.crt").read_bytes())
    return TlsFiles.in_directory(directory, "acme-shop")


@pytest.fixture
async def wallet(shop: Shop) -> AsyncIterator[str]:
    yield await shop.open_account(ledger_pb2.ACCOUNT_KIND_WALLET, funds_minor=1000)


async def deposit(cluster: LocalCluster, files: TlsFiles, token: str | None, account_id: str) -> None:
    """A ledger admin call (money moves), to the first ledger process."""
    async with secure_channel(cluster.grpc_target("ledger"), files, token) as channel:
        await ledger_pb2_grpc.LedgerServiceStub(channel).Deposit(
            ledger_pb2.DepositRequest(
                account_id=account_id,
                amount=Money(amount_minor=DEPOSIT_MINOR, currency="EUR"),
                deposit_id=str(uuid.uuid4()),
            ),
            timeout=10,
        )


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def balance_of(shop: Shop, account_id: str) -> int:
    response = await shop.ledger.GetBalance(ledger_pb2.GetBalanceRequest(account_id=account_id), timeout=10)
    return int(response.balance_minor)


@pytest.mark.parametrize("case", badcerts.CASES)
async def test_grpc_refuses_a_bad_client_certificate_at_the_handshake(
    cluster: LocalCluster, shop: Shop, wallet: str, bad_certificates: dict[str, TlsFiles], case: str
) -> None:
    token = client_token(cluster.certs_dir)  # valid, and for the identity the bad certificate claims

    error = await refused(deposit(cluster, bad_certificates[case], token, wallet))

    assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
    assert await balance_of(shop, wallet) == 1000
    await deposit(cluster, cluster.tls_files("ops"), token, wallet)  # the good certificate goes through
    assert await balance_of(shop, wallet) == 1000 + DEPOSIT_MINOR


async def test_grpc_refuses_a_call_without_a_client_certificate_or_without_tls(
    cluster: LocalCluster, shop: Shop, wallet: str
) -> None:
    target = cluster.grpc_target("ledger")
    request = ledger_pb2.GetBalanceRequest(account_id=wallet)
    without_certificate = grpc.ssl_channel_credentials(root_certificates=(cluster.certs_dir / "ca.crt").read_bytes())
    async with grpc.aio.secure_channel(target, without_certificate) as channel:
        no_certificate = await refused(ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance(request, timeout=5))
    async with grpc.aio.insecure_channel(target) as channel:
        plaintext = await refused(ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance(request, timeout=5))

    assert no_certificate.code() == grpc.StatusCode.UNAVAILABLE
    assert plaintext.code() == grpc.StatusCode.UNAVAILABLE
    assert await balance_of(shop, wallet) == 1000


async def test_a_service_identity_may_not_call_another_services_admin_method(
    cluster: LocalCluster, shop: Shop, wallet: str
) -> None:
    error = await refused(deposit(cluster, cluster.tls_files("inventory"), client_token(cluster.certs_dir), wallet))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "spiffe://paysaga/inventory may not call /paysaga.ledger.v1.LedgerService/Deposit"
    assert await balance_of(shop, wallet) == 1000
    line = wait_for_log(cluster, "ledger", '"peer":"spiffe://paysaga/inventory"')
    assert '"event":"grpc.refused"' in line and '"code":"PERMISSION_DENIED"' in line


def _with_foreign_signature(token: str, other: str) -> str:
    header, payload, _ = token.split(".")
    return ".".join((header, payload, other.split(".")[2]))


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing", grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required"),
        ("expired", grpc.StatusCode.UNAUTHENTICATED, "the token has expired"),
        ("bad signature", grpc.StatusCode.UNAUTHENTICATED, "the token's signature does not verify"),
        ("wrong audience", grpc.StatusCode.UNAUTHENTICATED, "the token is not meant for this service"),
        ("another client's", grpc.StatusCode.UNAUTHENTICATED, "the token was issued to spiffe://paysaga/client/acme"),
        ("missing scope", grpc.StatusCode.PERMISSION_DENIED, "needs the scope ledger:admin"),
        (
            "bound to another certificate of the same identity",
            grpc.StatusCode.UNAUTHENTICATED,
            "the token is bound to another certificate of this identity",
        ),
    ],
)
async def test_a_bad_token_is_refused_and_changes_nothing(
    cluster: LocalCluster,
    shop: Shop,
    wallet: str,
    case: str,
    code: grpc.StatusCode,
    message: str,
    tmp_path: Path,
) -> None:
    certs = cluster.certs_dir
    token = {
        "missing": None,
        "expired": client_token(certs, lifetime_s=60, now=authority.utc_now() - dt.timedelta(hours=1)),
        "bad signature": _with_foreign_signature(client_token(certs), client_token(certs)),
        "wrong audience": client_token(certs, audiences=("payments", "inventory")),
        "another client's": client_token(certs, "acme", certificate=certs / "ops.crt"),
        "missing scope": client_token(certs, scopes=("ledger:read",)),
        # A second certificate for the same identity (a new key pair): its token is not ops.crt's.
        "bound to another certificate of the same identity": client_token(
            certs, certificate=authority.issue(authority.load_ca(certs), tmp_path, "ops", Kind.CLIENT).path
        ),
    }[case]

    error = await refused(deposit(cluster, cluster.tls_files("ops"), token, wallet))

    assert error.code() == code
    assert message in (error.details() or "")
    assert await balance_of(shop, wallet) == 1000
    logs = "".join(path.read_text(errors="replace") for path in (cluster.state_dir / "logs").glob("*.log"))
    if token is not None:
        assert token not in logs and token.split(".")[2] not in logs, "a token must never be logged"


async def test_a_valid_token_with_the_scope_passes(cluster: LocalCluster, shop: Shop, wallet: str) -> None:
    await deposit(cluster, cluster.tls_files("ops"), client_token(cluster.certs_dir, scopes=("ledger:admin",)), wallet)

    assert await balance_of(shop, wallet) == 1000 + DEPOSIT_MINOR


@pytest.mark.parametrize("case", badcerts.CASES)
async def test_nats_refuses_a_bad_client_certificate(
    cluster: LocalCluster, bad_certificates: dict[str, TlsFiles], case: str
) -> None:
    with pytest.raises(Exception):  # noqa: B017 - nats-py reports a refused handshake in several ways
        await connect_as(cluster.nats_url, bad_certificates[case])

    client = await connect_as(cluster.nats_url, cluster.tls_files("ops"))
    await client.close()


async def test_nats_refuses_a_certificate_whose_key_it_was_never_given(
    cluster: LocalCluster, stranger: TlsFiles
) -> None:
    """A valid certificate of our CA, issued outside the cluster's certificates directory: its key
    is not pinned, so the handshake itself fails."""
    first = cluster.nats_nodes[0]  # whose log is read below (a cluster's client picks any node)
    with pytest.raises(Exception):  # noqa: B017 - nats-py reports a refused handshake in several ways
        await connect_as(first.url, stranger)

    wait_for_log(cluster, first.name, "certificate not pinned")


async def test_nats_refuses_a_valid_certificate_of_an_identity_it_does_not_know(cluster: LocalCluster) -> None:
    """Issued into the cluster's certificates directory, so its key is pinned: what refuses it is
    that NATS has no user for its identity."""
    name = f"stranger-{uuid.uuid4().hex[:8]}"
    authority.issue(authority.load_ca(cluster.certs_dir), cluster.certs_dir, name, Kind.CLIENT)
    files = TlsFiles.in_directory(cluster.certs_dir, name)
    first = cluster.nats_nodes[0]  # whose log is read below (a cluster's client picks any node)

    def authentication_errors() -> int:
        return cluster.log_path(first.name).read_text(errors="replace").count("authentication error")

    before = authentication_errors()

    async def refused_as_unknown() -> bool:
        with pytest.raises(Exception):  # noqa: B017 - an authorization violation closes the connection
            await connect_as(first.url, files)
        return authentication_errors() > before

    await eventually(refused_as_unknown, f"NATS refuses {name} as an unknown user once its key is pinned")


async def test_the_inventory_certificate_cannot_publish_ledger_events_or_read_others_traffic(
    cluster: LocalCluster,
) -> None:
    ops = await connect_as(cluster.nats_url, cluster.tls_files("ops"))
    before = (await ops.jetstream().stream_info("LEDGER_EVENTS")).state.last_seq
    errors: list[Exception] = []
    # What the server must report, asynchronously (nats-py lower-cases what the server said).
    violations = [
        'permissions violation for publish to "paysaga.events.ledger.fundsheld"',
        'permissions violation for subscription to "paysaga.events.>"',
        'permissions violation for subscription to "_inbox.ledger.>"',
    ]
    inventory = await connect_as(cluster.nats_url, cluster.tls_files("inventory"), errors)
    try:
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await inventory.jetstream().publish("paysaga.events.ledger.FundsHeld", b"forged", timeout=2)
        await inventory.subscribe("paysaga.events.>")
        await inventory.subscribe("_INBOX.ledger.>")
        await inventory.flush(timeout=5)

        async def all_reported() -> bool:
            reported = " ".join(str(error) for error in errors).lower()
            return all(violation in reported for violation in violations)

        await eventually(all_reported, f"the server reports {violations}", timeout_s=10)
    finally:
        await inventory.close()
        after = (await ops.jetstream().stream_info("LEDGER_EVENTS")).state.last_seq
        await ops.close()

    assert after == before, "nothing reached the ledger's stream"
