"""paysaga-oauth: ops register the clients the authorization server issues tokens to.

A client is registered under the name in its certificate (``paysaga-certs issue client NAME``):
that certificate is how it authenticates at the token endpoint (RFC 8705 tls_client_auth), so
there is no secret to hand over. It gets tokens for the scopes it is registered with, refresh
tokens if registered for them, and its own rate limits if given.

  paysaga-oauth register acme-shop --scope payments:write --scope payments:read --refresh-tokens
  paysaga-oauth register acme-shop --scope payments:read        # change a registration
  paysaga-oauth list
  paysaga-oauth remove acme-shop     # no more tokens; those it holds are revoked everywhere

It works on the authorization server's database (PAYSAGA_DATABASE_URL or --database-url), whether
or not the server runs; revocations reach the services through the server once it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from paysaga.core.identity import InvalidName, check_name
from paysaga.runtime.security.ratelimit import parse_limits
from paysaga.runtime.security.tokens import SCOPES
from paysaga.runtime.storage import database, migrations
from paysaga.runtime.storage.unit_of_work import Database
from services.auth.adapters import http_api, tables
from services.auth.adapters.repository import AuthUnit
from services.auth.bootstrap import MIGRATIONS
from services.auth.domain import (
    DEFAULT_ACCESS_TOKEN_LIFETIME_S,
    DEFAULT_REFRESH_TOKEN_LIFETIME_S,
    RegisteredClient,
    RegistrationError,
)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.run/data/auth.db"


async def _open(url: str) -> Database[AuthUnit]:
    engine = database.create_engine(url)
    await migrations.upgrade(engine, MIGRATIONS)
    return Database(engine, tables.metadata, AuthUnit, producer="auth")


async def register(url: str, client: RegisteredClient) -> str:
    store = await _open(url)
    try:
        async with store.transaction() as unit:
            created = await unit.auth.save_client(client)
    finally:
        await store.engine.dispose()
    return "registered" if created else "updated"


async def remove(url: str, client_id: str) -> int | None:
    """Remove a client and revoke its tokens; how many live access tokens were revoked (None: unknown client)."""
    store = await _open(url)
    try:
        async with store.transaction() as unit:
            if not await unit.auth.remove_client(client_id):
                return None
            revoked = await unit.auth.revoke_client(client_id)
            http_api.announce(unit, client_id, revoked, "client removed")
    finally:
        await store.engine.dispose()
    return len(revoked)


async def listing(url: str) -> list[RegisteredClient]:
    store = await _open(url)
    try:
        async with store.transaction() as unit:
            return await unit.auth.all_clients()
    finally:
        await store.engine.dispose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paysaga-oauth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("PAYSAGA_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="the authorization server's database (env PAYSAGA_DATABASE_URL, default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("register", help="register a client, or change its registration")
    add.add_argument("name", help="the client's name, as in its certificate (spiffe://paysaga/client/NAME)")
    add.add_argument("--scope", action="append", required=True, choices=SCOPES, help="repeat for each scope")
    add.add_argument("--refresh-tokens", action="store_true", help="issue refresh tokens (rotated on every use)")
    add.add_argument("--rate-limit", default="", help="its own limits, e.g. read=50/100,write=10/20")
    add.add_argument("--access-token-lifetime-s", type=int, default=DEFAULT_ACCESS_TOKEN_LIFETIME_S)
    add.add_argument("--refresh-token-lifetime-s", type=int, default=DEFAULT_REFRESH_TOKEN_LIFETIME_S)
    drop = commands.add_parser("remove", help="remove a client and revoke every token it holds")
    drop.add_argument("name")
    commands.add_parser("list", help="the registered clients")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "register":
            if args.rate_limit:
                parse_limits(args.rate_limit)
            client = RegisteredClient(
                client_id=check_name(args.name),
                scopes=frozenset(args.scope),
                refresh_tokens=args.refresh_tokens,
                rate_limits=args.rate_limit,
                access_token_lifetime_s=args.access_token_lifetime_s,
                refresh_token_lifetime_s=args.refresh_token_lifetime_s,
            ).check(SCOPES)
            outcome = asyncio.run(register(args.database_url, client))
            print(f"{outcome} {client.identity}: {' '.join(sorted(client.scopes))}")
        elif args.command == "remove":
            revoked = asyncio.run(remove(args.database_url, args.name))
            if revoked is None:
                print(f"paysaga-oauth: no client {args.name!r} is registered", file=sys.stderr)
                return 1
            print(f"removed {args.name}; {revoked} live access token(s) revoked")
        else:
            for client in asyncio.run(listing(args.database_url)):
                refresh = " refresh-tokens" if client.refresh_tokens else ""
                limits = f" rate-limit={client.rate_limits}" if client.rate_limits else ""
                print(f"{client.client_id}: {' '.join(sorted(client.scopes))}{refresh}{limits}")
    except (InvalidName, RegistrationError, ValueError) as error:
        print(f"paysaga-oauth: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
