"""The authorization server's HTTPS endpoints in this process, on each backend, with real mutual
TLS: what a malformed or unlucky request gets, that nothing is half-applied, and that every
revocation is an event in the outbox (what the services learn revocations from). The whole
cluster's view of it is tests/e2e/test_oauth.py."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from paysaga.core import eventing
from paysaga.ops.pki import authority
from paysaga.runtime.https import serve_https
from paysaga.runtime.security import tls, tokens
from paysaga.runtime.security.revocation import CRL_FILE, RevocationList
from paysaga.runtime.settings import TlsFiles
from paysaga.runtime.storage import database, migrations
from paysaga.runtime.storage.unit_of_work import Database
from services.auth.adapters import http_api, tables
from services.auth.adapters.oauth import AuthorizationServer
from services.auth.adapters.repository import AuthUnit
from services.auth.bootstrap import MIGRATIONS
from services.auth.domain import RegisteredClient


@dataclass
class Server:
    url: str
    store: Database[AuthUnit]
    certs_dir: Path
    directory: Path

    def client(self, name: str) -> TlsFiles:
        authority.issue(authority.load_ca(self.certs_dir), self.directory, name, authority.Kind.CLIENT, force=True)
        shutil.copyfile(self.certs_dir / "ca.crt", self.directory / "ca.crt")
        return TlsFiles.in_directory(self.directory, name)

    async def register(self, name: str, *, refresh: bool = False) -> TlsFiles:
        async with self.store.transaction() as unit:
            await unit.auth.save_client(RegisteredClient(name, frozenset({"payments:read"}), refresh_tokens=refresh))
        return self.client(name)

    async def post(self, files: TlsFiles, path: str, data: Any, **options: Any) -> tuple[int, dict[str, Any]]:
        connector = aiohttp.TCPConnector(ssl=tls.client_ssl_context(files))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(self.url + path, data=data, **options) as response,
        ):
            return response.status, await response.json()

    async def revocation_events(self) -> list[list[str]]:
        async with self.store.engine.connect() as connection:
            rows = await connection.execute(sa.select(tables.outbox.c.payload))
        found = []
        for (payload,) in rows:
            envelope = eventing.parse(payload)
            if envelope.WhichOneof("payload") == "tokens_revoked":
                found.append(sorted(envelope.tokens_revoked.token_ids))
        return found


@pytest.fixture
async def server(database_url: str, certs_dir: Path, tmp_path: Path) -> AsyncIterator[Server]:
    engine = database.create_engine(database_url)
    await migrations.upgrade(engine, MIGRATIONS)
    store = Database(engine, tables.metadata, AuthUnit, producer="auth")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    issuer = f"https://127.0.0.1:{port}"
    keys = http_api.SigningKeys(certs_dir / tokens.SIGNING_KEY_FILE, certs_dir / tokens.PUBLIC_KEYS_FILE)
    endpoints = http_api.AuthorizationEndpoints(
        store,
        AuthorizationServer(issuer, lambda: keys.signing),
        keys,
        RevocationList(certs_dir / CRL_FILE, certs_dir / "ca.crt"),
        issuer,
    )
    stop = asyncio.Event()
    serving = asyncio.create_task(
        serve_https(endpoints.application(), "127.0.0.1", port, TlsFiles.in_directory(certs_dir, "auth"), stop)
    )
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    try:
        yield Server(issuer, store, certs_dir, tmp_path)
    finally:
        stop.set()
        await serving
        await engine.dispose()


async def test_malformed_requests_get_rfc_6749_errors_and_change_nothing(server: Server) -> None:
    files = await server.register("shop")
    grant = {"grant_type": "client_credentials"}
    assert (await server.post(files, "/oauth2/token", {"grant_type": "password"}))[1]["error"] == (
        "unsupported_grant_type"
    )
    status, body = await server.post(
        files,
        "/oauth2/token",
        "grant_type=client_credentials&scope=a&scope=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (status, body["error"]) == (400, "invalid_request")  # a parameter given twice
    status, body = await server.post(files, "/oauth2/token", None, json=grant)
    assert (status, body["error"]) == (400, "invalid_request")  # not form-encoded
    status, body = await server.post(files, "/oauth2/token", {"grant_type": "refresh_token"})
    assert (status, body["error"]) == (400, "unauthorized_client")  # not registered for refresh tokens
    status, body = await server.post(files, "/oauth2/token", {**grant, "scope": "ledger:admin"})
    assert (status, body["error"]) == (400, "invalid_scope")
    async with server.store.engine.connect() as connection:
        issued = (await connection.execute(sa.select(sa.func.count()).select_from(tables.tokens))).scalar_one()
    assert issued == 0
    status, body = await server.post(files, "/oauth2/token", grant)
    assert status == 200 and body["token_type"] == "Bearer" and "refresh_token" not in body


async def test_another_clients_refresh_token_is_refused_without_touching_its_family(server: Server) -> None:
    owner = await server.register("owner", refresh=True)
    thief = await server.register("thief", refresh=True)
    _, token = await server.post(owner, "/oauth2/token", {"grant_type": "client_credentials"})
    status, body = await server.post(
        thief, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    status, body = await server.post(
        owner, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    )
    assert status == 200, body
    assert await server.revocation_events() == []


async def test_every_revocation_is_an_event_naming_the_revoked_access_tokens(server: Server) -> None:
    files = await server.register("shop", refresh=True)
    _, first = await server.post(files, "/oauth2/token", {"grant_type": "client_credentials"})
    _, second = await server.post(files, "/oauth2/token", {"grant_type": "client_credentials"})
    # Revoking a refresh token revokes its family: the access token issued with it.
    assert await server.post(files, "/oauth2/revoke", {"token": first["refresh_token"]}) == (200, {})
    # Revoking an access token revokes it alone.
    assert await server.post(files, "/oauth2/revoke", {"token": second["access_token"]}) == (200, {})
    # Again: nothing new to announce.
    assert await server.post(files, "/oauth2/revoke", {"token": second["access_token"]}) == (200, {})
    jti = [
        (await server.post(files, "/oauth2/introspect", {"token": token["access_token"]}))[1]
        for token in (first, second)
    ]
    assert [answer["active"] for answer in jti] == [False, False]
    events = await server.revocation_events()
    assert len(events) == 2 and all(len(ids) == 1 for ids in events)
    # The second grant's refresh token still works: only its access token was revoked.
    status, body = await server.post(
        files, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
    )
    assert status == 200, body


async def test_a_database_outage_is_503_temporarily_unavailable(server: Server) -> None:
    files = await server.register("shop")
    await server.store.engine.dispose()
    original = server.store.engine.url
    server.store.engine = database.create_engine(
        str(original.set(database="/nonexistent/dir/auth.db"))
        if original.get_backend_name() == "sqlite"
        else original.set(port=1).render_as_string(hide_password=False)
    )
    status, body = await server.post(files, "/oauth2/token", {"grant_type": "client_credentials"})
    assert (status, body["error"]) == (503, "temporarily_unavailable")


async def test_odd_input_is_a_clear_400(server: Server) -> None:
    files = await server.register("shop")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, body = await server.post(files, "/oauth2/token", b"grant_type=client_credentials&x=\xff\xfe", headers=form)
    assert (status, body["error"]) == (400, "invalid_request")  # not UTF-8
    status, body = await server.post(files, "/oauth2/token", {"scope": "payments:read"})
    assert (status, body["error"]) == (400, "invalid_request")  # no grant_type
    status, body = await server.post(files, "/oauth2/revoke", {"token": "x", "token_type_hint": "id_token"})
    assert (status, body["error"]) == (400, "unsupported_token_type")


async def test_a_narrower_refresh_keeps_the_refresh_tokens_scope(server: Server) -> None:
    async with server.store.transaction() as unit:
        await unit.auth.save_client(
            RegisteredClient("shop", frozenset({"payments:read", "payments:write"}), refresh_tokens=True)
        )
    files = server.client("shop")
    _, first = await server.post(files, "/oauth2/token", {"grant_type": "client_credentials"})
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "scope": "payments:read"}
    status, narrow = await server.post(files, "/oauth2/token", refresh)
    assert (status, narrow["scope"]) == (200, "payments:read")
    # RFC 6749 section 6: the new refresh token has the scope of the one it replaced.
    refresh = {"grant_type": "refresh_token", "refresh_token": narrow["refresh_token"]}
    status, wide = await server.post(files, "/oauth2/token", refresh)
    assert status == 200, wide
    assert set(wide["scope"].split()) == {"payments:read", "payments:write"}


async def test_a_revoked_refresh_token_is_refused_without_a_theft_alarm(server: Server) -> None:
    files = await server.register("shop", refresh=True)
    _, first = await server.post(files, "/oauth2/token", {"grant_type": "client_credentials"})
    _, second = await server.post(files, "/oauth2/token", {"grant_type": "client_credentials"})
    assert await server.post(files, "/oauth2/revoke", {"token": first["refresh_token"]}) == (200, {})
    status, body = await server.post(
        files, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    )
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "used before" not in body.get("error_description", "")
    # Another grant's tokens are not touched.
    status, body = await server.post(
        files, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": second["refresh_token"]}
    )
    assert status == 200, body
