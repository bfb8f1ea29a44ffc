"""Who is calling, and what a caller may do with a record: the ownership model.

Every account and every item has an owner: the identity of the client that created it, or the
one ops named (spiffe://paysaga/client/<name>; "" for a record only ops may touch). A client acts
only on what it owns; a caller with a service's admin scope (``<service>:admin``, ops) may do
everything there, and each of its calls is logged as an audit line by the gRPC layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paysaga.core.errors import InvalidArgument, PermissionDenied
from paysaga.core.identity import CLIENT_PREFIX, InvalidName, check_name, client_identity


@dataclass(frozen=True)
class Caller:
    """The identity of a call's client certificate and the scopes its token granted."""

    identity: str
    scopes: frozenset[str] = field(default_factory=frozenset)

    def is_admin(self, service: str) -> bool:
        return admin_scope(service) in self.scopes

    def owns(self, owner: str) -> bool:
        """Whether a record with this owner is the caller's (a record without owner is nobody's)."""
        return bool(owner) and owner == self.identity

    def may_use(self, service: str, owner: str) -> bool:
        return self.is_admin(service) or self.owns(owner)


def admin_scope(service: str) -> str:
    return f"{service}:admin"


def service_of_scope(scope: str) -> str:
    """'ledger:read' -> 'ledger'."""
    return scope.partition(":")[0]


def action_of_scope(scope: str) -> str:
    """'ledger:read' -> 'read'."""
    return scope.partition(":")[2]


def owner_for(caller: Caller, service: str, asked: str) -> str:
    """The owner of a record the caller creates: the caller itself, or (for an admin of the
    service) the client it names, as a name or a full identity."""
    if asked:
        try:
            asked = client_identity(check_name(asked.removeprefix(CLIENT_PREFIX)))
        except InvalidName as error:
            raise InvalidArgument(f"owner_client: {error}") from None
    if not asked or asked == caller.identity:
        return caller.identity
    if not caller.is_admin(service):
        raise PermissionDenied(f"only ops ({admin_scope(service)}) may create records for another client")
    return asked
