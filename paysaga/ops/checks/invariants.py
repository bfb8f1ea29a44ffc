"""The system's invariants, checked against the three services' databases.

For tests and the chaos suite (and for an operator, read-only, at any time). It reads each
service's tables directly, which no service ever does; every check returns what it found wrong
as readable lines, so an empty list means all is well.

- Money is conserved: every journal entry sums to zero; each account's balance equals the sum of
  its journal lines; user balances add up to the deposits (minus the external accounts).
- No wallet or merchant account has a negative balance, held amount or available amount, and an
  account's held amount equals the sum of its open holds.
- Stock is conserved: available + reserved + sold = received - restocked_out for every item, all
  non-negative; reserved and sold match the open and committed reservations.
- Every payment is terminal, and the services agree on how it ended: a COMPLETED payment's hold is
  captured and its stock committed; a REFUNDED one's hold refunded and stock restocked; a payment
  that FAILED or was CANCELLED or REJECTED has no money held or taken and no stock reserved or sold.
  A payment UNDER_REVIEW has no stock reserved (its funds are held, or about to be).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.runtime.storage.backends import backend_of
from paysaga.runtime.storage.database import create_engine

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "REJECTED", "REFUNDED")
# How each terminal payment status must be reflected by the ledger hold and the inventory reservation
# (None: no row at all is fine too).
EXPECTED_OUTCOME: Mapping[str, tuple[frozenset[str | None], frozenset[str | None]]] = {
    "COMPLETED": (frozenset({"CAPTURED"}), frozenset({"COMMITTED"})),
    "REFUNDED": (frozenset({"REFUNDED"}), frozenset({"RESTOCKED"})),
    # FAILED and CANCELLED sagas may have got as far as the capture before the deadline or the
    # cancel: then the capture was refunded and the sale restocked.
    "FAILED": (
        frozenset({None, "RELEASED", "CANCELLED", "REFUNDED"}),
        frozenset({None, "RELEASED", "CANCELLED", "RESTOCKED"}),
    ),
    "CANCELLED": (
        frozenset({None, "RELEASED", "CANCELLED", "REFUNDED"}),
        frozenset({None, "RELEASED", "CANCELLED", "RESTOCKED"}),
    ),
    # A review declined: the hold placed while it waited was released (or never placed), and no
    # stock was ever reserved (inventory may have left its marker of a cancelled purchase).
    "REJECTED": (frozenset({None, "RELEASED", "CANCELLED"}), frozenset({None, "CANCELLED"})),
}


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    payments_by_status: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


async def _rows(connection: AsyncConnection, query: str) -> list[Any]:
    return list(await connection.execute(sa.text(query)))


async def check_ledger(connection: AsyncConnection, report: Report) -> dict[str, tuple[str, int, str]]:
    for row in await _rows(
        connection, "SELECT entry_id, SUM(amount_minor) AS total FROM journal_lines GROUP BY entry_id"
    ):
        if row.total != 0:
            report.violations.append(f"ledger: journal entry {row.entry_id} sums to {row.total}, not 0")
    posted = {
        row.account_id: row.total
        for row in await _rows(
            connection, "SELECT account_id, SUM(amount_minor) AS total FROM journal_lines GROUP BY account_id"
        )
    }
    open_holds = {
        row.payer_account_id: row.total
        for row in await _rows(
            connection,
            "SELECT payer_account_id, SUM(amount_minor) AS total FROM holds "
            "WHERE status = 'HELD' GROUP BY payer_account_id",
        )
    }
    user_total = external_total = 0
    for account in await _rows(connection, "SELECT account_id, kind, balance_minor, held_minor FROM accounts"):
        if account.balance_minor != posted.get(account.account_id, 0):
            report.violations.append(
                f"ledger: account {account.account_id} balance {account.balance_minor} "
                f"!= its journal lines {posted.get(account.account_id, 0)}"
            )
        if account.kind == "EXTERNAL":
            external_total += account.balance_minor
            continue
        user_total += account.balance_minor
        available = account.balance_minor - account.held_minor
        if min(account.balance_minor, account.held_minor, available) < 0:
            report.violations.append(
                f"ledger: account {account.account_id} balance {account.balance_minor}, "
                f"held {account.held_minor}, available {available}: none may be negative"
            )
        if account.held_minor != open_holds.get(account.account_id, 0):
            report.violations.append(
                f"ledger: account {account.account_id} holds {account.held_minor} "
                f"but its open holds add up to {open_holds.get(account.account_id, 0)}"
            )
    # Follows from the checks above while they hold; kept as the statement of conservation.
    if user_total + external_total != 0:
        report.violations.append(f"ledger: user balances {user_total} do not match deposits {-external_total}")
    return {
        row.payment_id: (row.status, row.amount_minor, row.currency)
        for row in await _rows(connection, "SELECT payment_id, status, amount_minor, currency FROM holds")
    }


async def check_inventory(connection: AsyncConnection, report: Report) -> dict[str, str]:
    by_status: dict[tuple[str, str], int] = {
        (row.sku, row.status): row.total
        for row in await _rows(
            connection, "SELECT sku, status, SUM(quantity) AS total FROM reservations GROUP BY sku, status"
        )
    }
    for item in await _rows(connection, "SELECT * FROM items"):
        quantities = (item.quantity_available, item.quantity_reserved, item.quantity_sold, item.quantity_received)
        if min(*quantities, item.quantity_restocked_out) < 0:
            report.violations.append(f"inventory: {item.sku} has a negative quantity {quantities}")
        if sum(quantities[:3]) != item.quantity_received - item.quantity_restocked_out:
            report.violations.append(
                f"inventory: {item.sku} available {quantities[0]} + reserved {quantities[1]} + sold {quantities[2]} "
                f"!= received {item.quantity_received} - restocked out {item.quantity_restocked_out}"
            )
        for bucket, status in ((item.quantity_reserved, "RESERVED"), (item.quantity_sold, "COMMITTED")):
            if bucket != by_status.get((item.sku, status), 0):
                report.violations.append(
                    f"inventory: {item.sku} counts {bucket} {status.lower()} but its reservations say "
                    f"{by_status.get((item.sku, status), 0)}"
                )
    return {
        row.payment_id: row.status for row in await _rows(connection, "SELECT payment_id, status FROM reservations")
    }


async def check(ledger_url: str, inventory_url: str, payments_url: str, *, require_terminal: bool = True) -> Report:
    report = Report()
    # Each connection reads inside one transaction: a consistent snapshot of that database.
    engines = [create_engine(url) for url in (ledger_url, inventory_url, payments_url)]
    try:
        async with engines[0].connect() as ledger, engines[1].connect() as inventory, engines[2].connect() as payments:
            for engine, connection in zip(engines, (ledger, inventory, payments), strict=True):
                await backend_of(engine).snapshot(connection)
            holds = await check_ledger(ledger, report)
            reservations = await check_inventory(inventory, report)
            query = "SELECT payment_id, status, amount_minor, currency FROM payments"
            for payment in await _rows(payments, query):
                report.payments_by_status[payment.status] = report.payments_by_status.get(payment.status, 0) + 1
                if payment.status not in TERMINAL:
                    reservation = reservations.get(payment.payment_id)
                    if payment.status == "UNDER_REVIEW" and reservation in ("RESERVED", "COMMITTED"):
                        report.violations.append(
                            f"payment {payment.payment_id} is UNDER_REVIEW but has a reservation {reservation}"
                        )
                    if require_terminal:
                        report.violations.append(f"payments: {payment.payment_id} is still {payment.status}")
                    continue
                allowed_holds, allowed_reservations = EXPECTED_OUTCOME[payment.status]
                held = holds.get(payment.payment_id)
                hold, reservation = (held[0] if held else None), reservations.get(payment.payment_id)
                if held and hold != "CANCELLED" and held[1:] != (payment.amount_minor, payment.currency):
                    report.violations.append(
                        f"payment {payment.payment_id} is for {payment.amount_minor} {payment.currency} "
                        f"but the ledger held {held[1]} {held[2]}"
                    )
                if hold not in allowed_holds or reservation not in allowed_reservations:
                    report.violations.append(
                        f"payment {payment.payment_id} is {payment.status} but its hold is {hold} "
                        f"and its reservation {reservation}"
                    )
    finally:
        for engine in engines:
            await engine.dispose()
    return report
