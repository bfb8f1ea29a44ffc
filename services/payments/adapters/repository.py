"""Loading and saving payments inside a unit of work: ``unit.payments.load(payment_id)``."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from paysaga.runtime.storage.prepared import Prepared
from paysaga.runtime.storage.unit_of_work import Repository, UnitOfWork
from services.payments.adapters.tables import (
    account_owners,
    decision_hits,
    item_sellers,
    payment_decisions,
    payment_history,
    payments,
)
from services.payments.domain import Decision, Payment, PurchaseRequest, Status


@dataclass(frozen=True)
class AccountOwner:
    kind: str  # "WALLET" or "MERCHANT"
    client: str  # its owner's identity; "" for an account only ops may use


log = logging.getLogger(__name__)
REASON_MAX_CHARS = 500  # the reason columns' size

# The hot statements are built once and compiled once (paysaga.runtime.storage.prepared).
_LOAD = Prepared(sa.select(payments).where(payments.c.payment_id == sa.bindparam("payment_id")).with_for_update())
_BY_IDEMPOTENCY_KEY = Prepared(
    sa.select(payments).where(
        payments.c.requested_by == sa.bindparam("client"), payments.c.idempotency_key == sa.bindparam("key")
    )
)
_ACCOUNT_OWNER = Prepared(sa.select(account_owners).where(account_owners.c.account_id == sa.bindparam("account_id")))
_ITEM_SELLER = Prepared(sa.select(item_sellers.c.owner_client).where(item_sellers.c.sku == sa.bindparam("sku")))
_COUNT_RECENT = Prepared(
    sa.select(sa.func.count())
    .select_from(payments)
    .where(payments.c.payer_account_id == sa.bindparam("payer"), payments.c.created_at >= sa.bindparam("since"))
)
_INSERT = Prepared(payments.insert())
# SET takes the columns named by the parameters; the key is bound under another name.
_UPDATE = Prepared(payments.update().where(payments.c.payment_id == sa.bindparam("b_payment_id")))
_INSERT_HISTORY = Prepared(payment_history.insert())
_INSERT_DECISION = Prepared(payment_decisions.insert())
_INSERT_HITS = Prepared(decision_hits.insert())


def as_utc(value: dt.datetime) -> dt.datetime:
    """SQLite returns naive datetimes; ours are always UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def payment_from_row(row: Any) -> Payment:
    request = PurchaseRequest(
        row.idempotency_key,
        row.payer_account_id,
        row.merchant_account_id,
        row.sku,
        row.quantity,
        row.amount_minor,
        row.currency,
        row.sla_tier,
        row.requested_by,
        row.region,
    )
    return Payment(
        row.payment_id,
        request,
        Status(row.status),
        row.reason,
        row.version,
        as_utc(row.created_at),
        as_utc(row.updated_at),
        as_utc(row.deadline_at),
        row.timed_out,
        row.declined,
    )


class PaymentRepository(Repository):
    """Payments, locked for update when loaded; every saved version also goes to the history."""

    def __init__(self, unit: UnitOfWork) -> None:
        super().__init__(unit)
        self.changed: set[str] = set()  # the payments this unit stored a new version of

    async def load(self, payment_id: str) -> Payment | None:
        row = (await self._unit.run(_LOAD, {"payment_id": payment_id})).first()
        return None if row is None else payment_from_row(row)

    async def find_by_idempotency_key(self, client: str, key: str) -> tuple[Payment, str] | None:
        """The payment this client asked for with this key, and its request's fingerprint."""
        row = (await self._unit.run(_BY_IDEMPOTENCY_KEY, {"client": client, "key": key})).first()
        return None if row is None else (payment_from_row(row), row.request_hash)

    async def account_owner(self, account_id: str) -> AccountOwner | None:
        """Who owns the account, as far as payments has heard (None: not heard of yet)."""
        row = (await self._unit.run(_ACCOUNT_OWNER, {"account_id": account_id})).first()
        return None if row is None else AccountOwner(row.kind, row.owner_client)

    async def item_seller(self, sku: str) -> str | None:
        row = (await self._unit.run(_ITEM_SELLER, {"sku": sku})).first()
        return None if row is None else str(row.owner_client)

    async def record_account_owner(self, account_id: str, owner: AccountOwner) -> None:
        """Remember who owns an account. The first word stands: an owner is never changed by an
        event (a second, different one is logged as an alert)."""
        known = await self.account_owner(account_id)
        if known is None:
            values = {"account_id": account_id, "kind": owner.kind, "owner_client": owner.client}
            await self._connection.execute(account_owners.insert().values(**values))
        elif known != owner:
            log.error(
                "ownership.conflict",
                extra={"alert": True, "account_id": account_id, "kept": str(known), "ignored": str(owner)},
            )

    async def record_item_seller(self, sku: str, client: str) -> None:
        """Remember who sells an item; as for accounts, the first word stands."""
        known = await self.item_seller(sku)
        if known is None:
            await self._connection.execute(item_sellers.insert().values(sku=sku, owner_client=client))
        elif known != client:
            log.error("ownership.conflict", extra={"alert": True, "sku": sku, "kept": known, "ignored": client})

    async def lock_payer(self, payer_account_id: str) -> None:
        """Serialise new payments of one payer until commit, so replicas cannot both pass the
        velocity rule on the same count."""
        await self._unit.serialize(payer_account_id)  # the key replicas of every version use

    async def count_recent(self, payer_account_id: str, since: dt.datetime) -> int:
        row = (await self._unit.run(_COUNT_RECENT, {"payer": payer_account_id, "since": since})).first()
        return int(row[0] or 0) if row is not None else 0

    async def insert(self, payment: Payment) -> None:
        request = payment.request
        await self._unit.run(
            _INSERT,
            {
                "payment_id": payment.payment_id,
                "idempotency_key": request.idempotency_key,
                "request_hash": request.fingerprint(),
                "payer_account_id": request.payer_account_id,
                "merchant_account_id": request.merchant_account_id,
                "sku": request.sku,
                "quantity": request.quantity,
                "amount_minor": request.amount_minor,
                "currency": request.currency,
                "sla_tier": request.sla_tier,
                "requested_by": request.requested_by,
                "region": request.region,
                "status": payment.status.value,
                "reason": payment.reason[:REASON_MAX_CHARS],
                "version": payment.version,
                "timed_out": payment.timed_out,
                "declined": payment.declined,
                "created_at": payment.created_at,
                "updated_at": payment.updated_at,
                "deadline_at": payment.deadline_at,
            },
        )
        await self._record_history(payment)

    async def save(self, payment: Payment) -> None:
        await self._unit.run(
            _UPDATE,
            {
                "b_payment_id": payment.payment_id,
                "status": payment.status.value,
                "reason": payment.reason[:REASON_MAX_CHARS],
                "version": payment.version,
                "timed_out": payment.timed_out,
                "declined": payment.declined,
                "updated_at": payment.updated_at,
                "deadline_at": payment.deadline_at,
            },
        )
        await self._record_history(payment)

    async def record_decision(self, payment_id: str, decision: Decision, decided_at: dt.datetime) -> None:
        """The rules' decision on a new payment, with the payment (the same transaction)."""
        hits = [
            {
                "rule_id": hit.rule_id,
                "shadow": hit.shadow,
                "action": hit.action.value if hit.action else "",
                "score": hit.score,
                "reason": hit.reason,
                "inputs": dict(hit.inputs),
            }
            for hit in decision.hits
        ]
        await self._unit.run(
            _INSERT_DECISION,
            {
                "payment_id": payment_id,
                "decided_at": decided_at,
                "rule_set_sha256": decision.rule_set_sha256,
                "action": decision.action.value,
                "shadow_action": decision.shadow_action.value,
                "score": decision.score,
                "hits": json.dumps(hits, separators=(",", ":")),
                "inputs": json.dumps(decision.inputs, separators=(",", ":")),
            },
        )
        if hits:
            await self._unit.run(
                _INSERT_HITS,
                [{"payment_id": payment_id, "rule_id": hit.rule_id, "shadow": hit.shadow} for hit in decision.hits],
            )

    async def _record_history(self, payment: Payment) -> None:
        self.changed.add(payment.payment_id)
        await self._unit.run(
            _INSERT_HISTORY,
            {
                "payment_id": payment.payment_id,
                "version": payment.version,
                "status": payment.status.value,
                "reason": payment.reason[:REASON_MAX_CHARS],
                "changed_at": payment.updated_at,
            },
        )


class PaymentsUnit(UnitOfWork):
    """The payments service's unit of work."""

    @functools.cached_property
    def payments(self) -> PaymentRepository:
        return PaymentRepository(self)
