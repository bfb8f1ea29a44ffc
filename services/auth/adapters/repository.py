"""Loading and saving the authorization server's clients and tokens inside a unit of work."""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import sqlalchemy as sa

from paysaga.runtime.storage.unit_of_work import Repository, UnitOfWork
from services.auth.adapters.tables import clients, tokens
from services.auth.domain import ACCESS_TOKEN, IssuedToken, RegisteredClient


def _client_from_row(row: Any) -> RegisteredClient:
    return RegisteredClient(
        client_id=row.client_id,
        scopes=frozenset(row.scopes.split()),
        refresh_tokens=bool(row.refresh_tokens),
        rate_limits=row.rate_limits,
        access_token_lifetime_s=row.access_token_lifetime_s,
        refresh_token_lifetime_s=row.refresh_token_lifetime_s,
    )


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite gives back naive datetimes; everything here is UTC."""
    return moment.replace(tzinfo=dt.UTC) if moment is not None and moment.tzinfo is None else moment


def _token_from_row(row: Any) -> IssuedToken:
    return IssuedToken(
        kind=row.kind,
        key=row.token_key,
        client_id=row.client_id,
        scope=row.scope,
        family_id=row.family_id,
        certificate_thumbprint=row.certificate_thumbprint,
        issued_at=_aware(row.issued_at) or row.issued_at,
        expires_at=_aware(row.expires_at) or row.expires_at,
        revoked_at=_aware(row.revoked_at),
        used_at=_aware(row.used_at),
    )


class AuthRepository(Repository):
    async def client(self, client_id: str) -> RegisteredClient | None:
        row = (await self._connection.execute(sa.select(clients).where(clients.c.client_id == client_id))).first()
        return None if row is None else _client_from_row(row)

    async def all_clients(self) -> list[RegisteredClient]:
        rows = await self._connection.execute(sa.select(clients).order_by(clients.c.client_id))
        return [_client_from_row(row) for row in rows]

    async def save_client(self, client: RegisteredClient) -> bool:
        """Register client, or change its registration; True if it is new."""
        values = {
            "scopes": " ".join(sorted(client.scopes)),
            "refresh_tokens": client.refresh_tokens,
            "rate_limits": client.rate_limits,
            "access_token_lifetime_s": client.access_token_lifetime_s,
            "refresh_token_lifetime_s": client.refresh_token_lifetime_s,
        }
        changed = await self._connection.execute(
            clients.update().where(clients.c.client_id == client.client_id).values(**values)
        )
        if changed.rowcount:
            return False
        await self._connection.execute(
            clients.insert().values(client_id=client.client_id, registered_at=self._unit.now(), **values)
        )
        return True

    async def remove_client(self, client_id: str) -> bool:
        removed = await self._connection.execute(clients.delete().where(clients.c.client_id == client_id))
        return bool(removed.rowcount)

    async def insert_token(self, token: IssuedToken) -> None:
        await self._connection.execute(
            tokens.insert().values(
                token_key=token.key,
                kind=token.kind,
                client_id=token.client_id,
                family_id=token.family_id,
                scope=token.scope,
                certificate_thumbprint=token.certificate_thumbprint,
                issued_at=token.issued_at,
                expires_at=token.expires_at,
            )
        )

    async def token(self, key: str) -> IssuedToken | None:
        row = (await self._connection.execute(sa.select(tokens).where(tokens.c.token_key == key))).first()
        return None if row is None else _token_from_row(row)

    async def mark_used(self, key: str) -> bool:
        """Rotate a refresh token away; False if it was used or revoked already (by a concurrent
        refresh: then it is being reused)."""
        changed = await self._connection.execute(
            tokens.update()
            .where(tokens.c.token_key == key, tokens.c.used_at.is_(None), tokens.c.revoked_at.is_(None))
            .values(used_at=self._unit.now())
        )
        return bool(changed.rowcount)

    async def revoke(self, condition: sa.ColumnElement[bool]) -> list[IssuedToken]:
        """Revoke the tokens that match condition and are not revoked yet; the access tokens among
        them that have not expired (which the services must be told of).

        Until a pass finds nothing more: on PostgreSQL a pass that waited for a concurrent refresh
        of the same family does not see the tokens that refresh inserted; the next pass does."""
        now = self._unit.now()
        live = tokens.c.revoked_at.is_(None)
        revoked: list[IssuedToken] = []
        while True:
            rows = await self._connection.execute(sa.select(tokens).where(condition, live).with_for_update())
            found = [_token_from_row(row) for row in rows]
            if not found:
                break
            await self._connection.execute(
                tokens.update()
                .where(tokens.c.token_key.in_([token.key for token in found]), live)
                .values(revoked_at=now)
            )
            revoked += found
        return [token for token in revoked if token.kind == ACCESS_TOKEN and token.expires_at > now]

    async def revoke_token(self, key: str) -> list[IssuedToken]:
        return await self.revoke(tokens.c.token_key == key)

    async def revoke_family(self, family_id: str) -> list[IssuedToken]:
        return await self.revoke(tokens.c.family_id == family_id)

    async def revoke_client(self, client_id: str) -> list[IssuedToken]:
        return await self.revoke(tokens.c.client_id == client_id)


class AuthUnit(UnitOfWork):
    """The authorization server's unit of work."""

    @functools.cached_property
    def auth(self) -> AuthRepository:
        return AuthRepository(self)
