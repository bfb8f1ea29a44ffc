"""The payments service's read queries: each in a read-only snapshot, none of them locks."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core.access import Caller
from paysaga.core.errors import NotFound
from paysaga.core.validation import PageRequest
from paysaga.runtime.storage.pages import page
from paysaga.runtime.storage.unit_of_work import Database
from services.payments.adapters.repository import as_utc, payment_from_row
from services.payments.adapters.tables import (
    account_owners,
    decision_hits,
    payment_decisions,
    payment_history,
    payments,
)
from services.payments.domain import IN_FLIGHT, Action, Decision, Payment, RuleHit, Status

SERVICE = "payments"
_GET = sa.select(payments).where(payments.c.payment_id == sa.bindparam("payment_id"))
_OWNERS = sa.select(account_owners.c.owner_client).where(
    account_owners.c.account_id.in_(sa.bindparam("account_ids", expanding=True))
)
_HISTORY_AFTER = (
    sa.select(payment_history)
    .where(payment_history.c.payment_id == sa.bindparam("payment_id"), payment_history.c.version > sa.bindparam("v"))
    .order_by(payment_history.c.version)
)
_DECISION = sa.select(payment_decisions).where(payment_decisions.c.payment_id == sa.bindparam("payment_id"))
_COUNT_IN_FLIGHT = (
    sa.select(sa.func.count()).select_from(payments).where(payments.c.status.in_([s.value for s in IN_FLIGHT]))
)


async def payment(database: Database, payment_id: str, caller: Caller) -> Payment:
    """The payment, if the caller owns its payer's or its merchant's account (or is ops); to
    anyone else it does not exist."""
    async with database.read() as connection:
        row = (await connection.execute(_GET, {"payment_id": payment_id})).first()
        owners = [] if row is None else await _owners(connection, row.payer_account_id, row.merchant_account_id)
    if row is None or not (caller.is_admin(SERVICE) or any(caller.owns(owner) for owner in owners)):
        raise NotFound(f"payment {payment_id} does not exist")
    return payment_from_row(row)


async def _owners(connection: AsyncConnection, *account_ids: str) -> list[str]:
    rows = await connection.execute(_OWNERS, {"account_ids": list(account_ids)})
    return [row.owner_client for row in rows]


async def payments_page(
    database: Database,
    request: PageRequest,
    caller: Caller,
    *,
    payer: str = "",
    merchant: str = "",
    status: Status | None = None,
) -> tuple[list[Payment], str]:
    """A page of the payments the caller may see (those of its own accounts; ops: all) in the order
    they were created, optionally only a payer's, a merchant's or those in one status; and the
    next page's token."""
    query = sa.select(payments)
    if not caller.is_admin(SERVICE):
        own = sa.select(account_owners.c.account_id).where(account_owners.c.owner_client == caller.identity)
        query = query.where(sa.or_(payments.c.payer_account_id.in_(own), payments.c.merchant_account_id.in_(own)))
    if payer:
        query = query.where(payments.c.payer_account_id == payer)
    if merchant:
        query = query.where(payments.c.merchant_account_id == merchant)
    if status is not None:
        query = query.where(payments.c.status == status.value)
    async with database.read() as connection:
        found = await page(connection, query, payments.c.payment_number, request)
    return [payment_from_row(row) for row in found.rows], found.next_page_token


async def history_after(database: Database, payment_id: str, version: int) -> list[Any]:
    """The payment's status changes after version, oldest first."""
    async with database.read() as connection:
        return list(await connection.execute(_HISTORY_AFTER, {"payment_id": payment_id, "v": version}))


async def overdue(database: Database, now: dt.datetime, limit: int) -> list[str]:
    """Payments still in flight, or under review, past their deadline, the most overdue first."""
    async with database.read() as connection:
        rows = await connection.execute(
            sa.select(payments.c.payment_id)
            .where(payments.c.status.in_([status.value for status in (*IN_FLIGHT, Status.UNDER_REVIEW)]))
            .where(payments.c.deadline_at < now)
            .order_by(payments.c.deadline_at)
            .limit(limit)
        )
        return [row.payment_id for row in rows]


async def stuck_compensations(database: Database, since: dt.datetime, limit: int) -> list[Any]:
    """Payments waiting for a compensation (CANCELLING, REFUNDING) without a change since `since`."""
    async with database.read() as connection:
        rows = await connection.execute(
            sa.select(payments.c.payment_id, payments.c.status, payments.c.updated_at)
            .where(payments.c.status.in_([Status.CANCELLING.value, Status.REFUNDING.value]))
            .where(payments.c.updated_at < since)
            .limit(limit)
        )
        return list(rows)


async def count_in_flight(database: Database) -> int:
    """Payments the saga is still moving forward (an index range on status)."""
    async with database.read() as connection:
        return int(await connection.scalar(_COUNT_IN_FLIGHT) or 0)


@dataclass(frozen=True)
class DecisionRecord:
    payment_id: str
    decided_at: dt.datetime
    decision: Decision


def decision_from_row(row: Any) -> DecisionRecord:
    hits = tuple(
        RuleHit(
            hit["rule_id"],
            hit["shadow"],
            Action(hit["action"]) if hit["action"] else None,
            hit["score"],
            hit["reason"],
            tuple(hit["inputs"].items()),
        )
        for hit in json.loads(row.hits)
    )
    decision = Decision(
        row.rule_set_sha256,
        Action(row.action),
        row.score,
        hits,
        Action(row.shadow_action),
        inputs=json.loads(row.inputs),
    )
    return DecisionRecord(row.payment_id, as_utc(row.decided_at), decision)


async def decision(database: Database, payment_id: str) -> DecisionRecord | None:
    """The rules' recorded decision on a payment, or None (a payment created before decisions
    were recorded)."""
    async with database.read() as connection:
        row = (await connection.execute(_DECISION, {"payment_id": payment_id})).first()
    return None if row is None else decision_from_row(row)


@dataclass(frozen=True)
class DecisionsQuery:
    page: PageRequest
    action: Action | None = None
    rule_id: str = ""
    shadow_only: bool = False
    payer: str = ""
    merchant: str = ""
    since: dt.datetime | None = None


async def decisions_page(database: Database, query: DecisionsQuery) -> tuple[list[DecisionRecord], str]:
    """A page of recorded decisions in the order they were taken, filtered; and the next page's token."""
    select = sa.select(payment_decisions)
    if query.action is not None:
        select = select.where(payment_decisions.c.action == query.action.value)
    if query.rule_id or query.shadow_only:
        hits = sa.select(decision_hits.c.payment_id)
        if query.rule_id:
            hits = hits.where(decision_hits.c.rule_id == query.rule_id)
        if query.shadow_only:
            hits = hits.where(decision_hits.c.shadow.is_(True))
        select = select.where(payment_decisions.c.payment_id.in_(hits))
    if query.payer or query.merchant:
        of_party = sa.select(payments.c.payment_id)
        if query.payer:
            of_party = of_party.where(payments.c.payer_account_id == query.payer)
        if query.merchant:
            of_party = of_party.where(payments.c.merchant_account_id == query.merchant)
        select = select.where(payment_decisions.c.payment_id.in_(of_party))
    if query.since is not None:
        select = select.where(payment_decisions.c.decided_at >= query.since)
    async with database.read() as connection:
        found = await page(connection, select, payment_decisions.c.decision_number, query.page)
    return [decision_from_row(row) for row in found.rows], found.next_page_token
