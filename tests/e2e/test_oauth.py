"""The OAuth 2.0 authorization server in the running cluster, used as clients nobody here wrote
use it: curl, and Authlib's OAuth client. A token comes over mutual TLS, works with the
certificate it was issued for and no other, and stops working everywhere once revoked; a refresh
token used twice revokes its whole family; introspection and the metadata say what RFC 7662 and
RFC 8414 say. On both backends (the services on SQLite, or on PostgreSQL with two replicas each:
every replica must refuse a revoked token)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from authlib.integrations.httpx_client import OAuth2Client

from paysaga.ops.client import oauth
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.ops.pki import authority, revocation
from paysaga.ops.pki.authority import Kind
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles
from tests.helpers import eventually, secure_channel

pytestmark = pytest.mark.e2e
SCOPES = ("payments:read", "ledger:read")


def curl_path() -> str:
    found = shutil.which("curl")
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI needs curl for the OAuth tests")
        pytest.skip("curl is not installed: the OAuth tests use it as a client nobody here wrote")
    return found


@dataclass(frozen=True)
class Client:
    name: str
    files: TlsFiles


def new_client(cluster: LocalCluster, directory: Path, *, register: bool = True, refresh: bool = False) -> Client:
    """A client certificate of a new name from our CA, registered with the authorization server
    by ops' command."""
    name = f"oauth-{uuid.uuid4().hex[:8]}"
    authority.issue(authority.load_ca(cluster.certs_dir), directory, name, Kind.CLIENT, force=True)
    shutil.copyfile(cluster.certs_dir / "ca.crt", directory / "ca.crt")
    if register:
        command = [sys.executable, "-m", "services.auth.clients_cli", "--database-url", cluster.database_url("auth")]
        command += ["register", name, *(f"--scope={scope}" for scope in SCOPES)]
        command += ["--refresh-tokens"] if refresh else []
        subprocess.run(command, check=True, capture_output=True)
    return Client(name, TlsFiles.in_directory(directory, name))


def curl(cluster: LocalCluster, files: TlsFiles, path: str, *form: str) -> tuple[int, Any]:
    """POST (or GET, without form) to the authorization server with curl over mTLS; status and JSON."""
    command = [curl_path(), "-sS", "-w", "\n%{http_code}", "--cacert", str(files.ca_file)]
    command += ["--cert", str(files.cert_file), "--key", str(files.key_file)]
    for field in form:
        command += ["--data-urlencode", field]
    done = subprocess.run([*command, cluster.oauth_issuer + path], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


async def list_payments(cluster: LocalCluster, files: TlsFiles, token: str) -> list[grpc.StatusCode]:
    """Each payments replica's answer to the client's ListPayments (OK, or the refusal's code)."""
    codes = []
    for instance in cluster.instances("payments"):
        channel = secure_channel(cluster.grpc_target(instance), files, token)
        try:
            await payments_pb2_grpc.PaymentServiceStub(channel).ListPayments(
                payments_pb2.ListPaymentsRequest(), timeout=10
            )
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
        finally:
            await channel.close()
    return codes


async def refused_everywhere(cluster: LocalCluster, files: TlsFiles, token: str) -> None:
    async def refused() -> bool:
        return set(await list_payments(cluster, files, token)) == {grpc.StatusCode.UNAUTHENTICATED}

    await eventually(refused, "every payments replica refusing the revoked token", timeout_s=15)


async def test_curl_gets_a_certificate_bound_token_that_works_only_with_its_certificate(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    client = new_client(cluster, tmp_path)
    status, token = curl(cluster, client.files, "/oauth2/token", "grant_type=client_credentials")
    assert status == 200, token
    assert token["token_type"] == "Bearer"
    assert set(token["scope"].split()) == set(SCOPES)
    assert "refresh_token" not in token  # not registered for refresh tokens
    assert await list_payments(cluster, client.files, token["access_token"]) == [grpc.StatusCode.OK] * len(
        cluster.instances("payments")
    )
    # Another certificate of the very same identity does not carry the token.
    other = tmp_path / "other"
    authority.issue(authority.load_ca(cluster.certs_dir), other, client.name, Kind.CLIENT, force=True)
    shutil.copyfile(cluster.certs_dir / "ca.crt", other / "ca.crt")
    assert set(await list_payments(cluster, TlsFiles.in_directory(other, client.name), token["access_token"])) == {
        grpc.StatusCode.UNAUTHENTICATED
    }
    # A scope it is not registered for is refused, not quietly dropped.
    status, refusal = curl(
        cluster, client.files, "/oauth2/token", "grant_type=client_credentials", "scope=payments:admin"
    )
    assert (status, refusal["error"]) == (400, "invalid_scope")


async def test_an_unregistered_or_revoked_client_gets_no_token(cluster: LocalCluster, tmp_path: Path) -> None:
    stranger = new_client(cluster, tmp_path / "stranger", register=False)
    status, refusal = curl(cluster, stranger.files, "/oauth2/token", "grant_type=client_credentials")
    assert (status, refusal["error"]) == (400, "invalid_client")
    # A client_id that is not the certificate's is refused too (RFC 8705: the certificate is the credential).
    client = new_client(cluster, tmp_path / "client")
    status, refusal = curl(
        cluster, client.files, "/oauth2/token", "grant_type=client_credentials", f"client_id={stranger.name}"
    )
    assert (status, refusal["error"]) == (400, "invalid_client")
    # Its certificate revoked, a registered client is refused at the token endpoint within seconds.
    revocation.revoke(cluster.certs_dir, cluster.certs_dir, [revocation.serial_of(client.files.cert_file)])

    async def refused() -> bool:
        status, body = curl(cluster, client.files, "/oauth2/token", "grant_type=client_credentials")
        return status == 401 and body["error"] == "invalid_client"

    await eventually(refused, "the token endpoint refusing a revoked certificate", timeout_s=15)


async def test_revocation_and_introspection_behave_as_their_rfcs_say(cluster: LocalCluster, tmp_path: Path) -> None:
    client = new_client(cluster, tmp_path / "client")
    _, token = curl(cluster, client.files, "/oauth2/token", "grant_type=client_credentials")
    access = token["access_token"]
    status, active = curl(cluster, client.files, "/oauth2/introspect", f"token={access}")
    assert status == 200
    assert active["active"] is True
    assert active["client_id"] == client.name
    assert active["sub"] == f"spiffe://paysaga/client/{client.name}"
    assert active["cnf"]["x5t#S256"]
    # Another client learns nothing of it; one of our services may introspect it.
    other = new_client(cluster, tmp_path / "other")
    assert curl(cluster, other.files, "/oauth2/introspect", f"token={access}") == (200, {"active": False})
    service = TlsFiles.in_directory(cluster.certs_dir, "payments")
    assert curl(cluster, service, "/oauth2/introspect", f"token={access}")[1]["active"] is True
    # Another client cannot revoke it (RFC 7009: the token was not issued to it)...
    status, refusal = curl(cluster, other.files, "/oauth2/revoke", f"token={access}")
    assert (status, refusal["error"]) == (400, "invalid_grant")
    assert curl(cluster, client.files, "/oauth2/introspect", f"token={access}")[1]["active"] is True
    # ... its own client can; then it is inactive, and every replica of every service refuses it.
    assert curl(cluster, client.files, "/oauth2/revoke", f"token={access}", "token_type_hint=access_token") == (200, {})
    assert curl(cluster, client.files, "/oauth2/introspect", f"token={access}") == (200, {"active": False})
    await refused_everywhere(cluster, client.files, access)
    # Revoking what is unknown or already revoked answers 200 too, as RFC 7009 says.
    assert curl(cluster, client.files, "/oauth2/revoke", f"token={access}") == (200, {})
    assert curl(cluster, client.files, "/oauth2/revoke", "token=no-such-token") == (200, {})
    # A token with a forged signature is not taken for the one whose id it copies.
    header, claims, _ = access.split(".")
    assert curl(cluster, service, "/oauth2/introspect", f"token={header}.{claims}.AAAA") == (200, {"active": False})


async def test_a_refresh_token_used_twice_revokes_its_whole_family(cluster: LocalCluster, tmp_path: Path) -> None:
    client = new_client(cluster, tmp_path, refresh=True)
    _, first = curl(cluster, client.files, "/oauth2/token", "grant_type=client_credentials")
    status, second = curl(
        cluster, client.files, "/oauth2/token", "grant_type=refresh_token", f"refresh_token={first['refresh_token']}"
    )
    assert status == 200, second
    assert second["refresh_token"] != first["refresh_token"]  # rotated
    assert set(await list_payments(cluster, client.files, second["access_token"])) == {grpc.StatusCode.OK}
    # The first refresh token again: someone else has it. Refused, and the family is revoked:
    # the access token and the refresh token the legitimate refresh got stop working too.
    status, refusal = curl(
        cluster, client.files, "/oauth2/token", "grant_type=refresh_token", f"refresh_token={first['refresh_token']}"
    )
    assert (status, refusal["error"]) == (400, "invalid_grant")
    await refused_everywhere(cluster, client.files, second["access_token"])
    status, refusal = curl(
        cluster, client.files, "/oauth2/token", "grant_type=refresh_token", f"refresh_token={second['refresh_token']}"
    )
    assert (status, refusal["error"]) == (400, "invalid_grant")
    assert curl(cluster, client.files, "/oauth2/introspect", f"token={second['refresh_token']}") == (
        200,
        {"active": False},
    )


def test_a_library_oauth_client_fetches_and_refreshes_a_token(cluster: LocalCluster, tmp_path: Path) -> None:
    client = new_client(cluster, tmp_path, refresh=True)
    endpoint = cluster.oauth_issuer + "/oauth2/token"
    # RFC 8705 tls_client_auth: the client_id in the body, the certificate at the handshake.
    with OAuth2Client(
        client.name, token_endpoint_auth_method="none", verify=tls.client_ssl_context(client.files)
    ) as session:
        token = session.fetch_token(endpoint, grant_type="client_credentials")
        assert set(token["scope"].split()) == set(SCOPES)
        refreshed = session.refresh_token(endpoint, refresh_token=token["refresh_token"])
        assert refreshed["access_token"] != token["access_token"]
        metadata = session.get(cluster.oauth_issuer + "/.well-known/oauth-authorization-server").json()
        keys = session.get(metadata["jwks_uri"]).json()
    assert metadata["issuer"] == cluster.oauth_issuer
    assert metadata["token_endpoint"] == endpoint
    assert metadata["token_endpoint_auth_methods_supported"] == ["tls_client_auth"]
    assert metadata["tls_client_certificate_bound_access_tokens"] is True
    header = json.loads(_b64(refreshed["access_token"].split(".")[0]))
    assert header["typ"] == "at+jwt"
    assert header["kid"] in {key["kid"] for key in keys["keys"]}


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_the_cli_gets_and_refreshes_its_own_token(cluster: LocalCluster, tmp_path: Path) -> None:
    client = new_client(cluster, tmp_path, refresh=True)
    files = client.files
    command = [sys.executable, "-m", "paysaga.ops.client.cli", "--json", "--oauth-url", cluster.oauth_issuer]
    command += ["--cert", str(files.cert_file), "--key", str(files.key_file), "--ca", str(files.ca_file)]
    command += ["--payments", cluster.targets("payments"), "payment", "list"]
    environment = {key: value for key, value in os.environ.items() if key != "PAYSAGA_TOKEN"}

    def listed() -> dict[str, Any]:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)
        assert done.returncode == 0, done.stderr
        cached: dict[str, Any] = json.loads(files.cert_file.with_suffix(".oauth.json").read_text())
        return cached

    first = listed()
    assert first["refresh_token"]
    assert (files.cert_file.with_suffix(".oauth.json").stat().st_mode & 0o777) == 0o600
    assert listed() == first  # still good: used as it is
    # About to expire: the CLI refreshes it (a new access token and a rotated refresh token).
    first["expires_at"] = 0
    files.cert_file.with_suffix(".oauth.json").write_text(json.dumps(first))
    refreshed = listed()
    assert refreshed["access_token"] != first["access_token"]
    assert refreshed["refresh_token"] != first["refresh_token"]
    # Several commands at once with a token about to expire: one refreshes, the others use its
    # token (two refreshes with one refresh token would revoke the family as a theft).
    refreshed["expires_at"] = 0
    files.cert_file.with_suffix(".oauth.json").write_text(json.dumps(refreshed))
    barrier = threading.Barrier(4)

    def renew() -> str:
        barrier.wait()
        return oauth.access_token(cluster.oauth_issuer, files)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        tokens_got = list(pool.map(lambda _: renew(), range(4)))
    assert len(set(tokens_got)) == 1  # one refresh; the others took its token
    reused = [line for line in cluster.log_path("auth").read_text().splitlines() if "refresh_token_reused" in line]
    assert not [line for line in reused if f"client/{client.name}" in line]
    refreshed = json.loads(files.cert_file.with_suffix(".oauth.json").read_text())
    # Its refresh token revoked: the CLI starts a new grant rather than fail.
    assert curl(cluster, files, "/oauth2/revoke", f"token={refreshed['refresh_token']}") == (200, {})
    refreshed["expires_at"] = 0
    files.cert_file.with_suffix(".oauth.json").write_text(json.dumps(refreshed))
    assert listed()["access_token"] != refreshed["access_token"]


async def test_two_refreshes_racing_with_one_refresh_token_do_not_both_win(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    client = new_client(cluster, tmp_path, refresh=True)
    _, first = curl(cluster, client.files, "/oauth2/token", "grant_type=client_credentials")
    form = ("grant_type=refresh_token", f"refresh_token={first['refresh_token']}")
    answers = await asyncio.gather(
        *(asyncio.to_thread(curl, cluster, client.files, "/oauth2/token", *form) for _ in range(4))
    )
    granted = [body for status, body in answers if status == 200]
    refused = [body["error"] for status, body in answers if status != 200]
    # At most one refresh wins; every other is a reuse, which revokes the family, the winner's too.
    assert len(granted) <= 1
    assert refused and set(refused) == {"invalid_grant"}
    for body in granted:
        await refused_everywhere(cluster, client.files, body["access_token"])
