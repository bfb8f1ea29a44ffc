"""The invariant checker finds what is wrong: real migrated databases, then one fault at a time."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from paysaga.ops.checks import invariants
from paysaga.runtime.storage import migrations
from paysaga.runtime.storage.database import create_engine

SERVICES = Path(__file__).resolve().parents[2] / "services"
NOW = "2026-11-25 12:00:00"
GOOD = {
    "ledger": [
        "INSERT INTO accounts VALUES ('ext', 'EXTERNAL', 'EUR', 'x', -5000, 0, '{now}', '')",
        "INSERT INTO accounts VALUES ('payer', 'WALLET', 'EUR', 'x', 3750, 0, '{now}', '')",
        "INSERT INTO accounts VALUES ('shop', 'MERCHANT', 'EUR', 'x', 1250, 0, '{now}', '')",
        "INSERT INTO journal_entries VALUES ('d1', 'DEPOSIT', '', NULL, '{now}')",
        "INSERT INTO journal_lines (entry_id, account_id, amount_minor)"
        " VALUES ('d1', 'ext', -5000), ('d1', 'payer', 5000)",
        "INSERT INTO journal_entries VALUES ('c1', 'CAPTURE', 'p1', NULL, '{now}')",
        "INSERT INTO journal_lines (entry_id, account_id, amount_minor)"
        " VALUES ('c1', 'payer', -1250), ('c1', 'shop', 1250)",
        "INSERT INTO holds VALUES ('h1', 'p1', 'payer', 'shop', 1250, 'EUR', 'CAPTURED', '{now}')",
    ],
    "inventory": [
        "INSERT INTO items (sku, name, unit_price_minor, currency, quantity_available, quantity_reserved,"
        " quantity_sold, quantity_received, quantity_restocked_out, created_at, updated_at)"
        " VALUES ('mug', 'Mug', 1250, 'EUR', 2, 0, 1, 3, 0, '{now}', '{now}')",
        "INSERT INTO reservations VALUES ('r1', 'p1', 'mug', 1, 'COMMITTED', '{now}')",
    ],
    "payments": [
        "INSERT INTO payments (payment_id, idempotency_key, request_hash, payer_account_id, merchant_account_id, sku,"
        " quantity, amount_minor, currency, sla_tier, status, reason, version, timed_out, created_at, updated_at,"
        " deadline_at) VALUES ('p1', 'k1', 'h', 'payer', 'shop', 'mug', 1, 1250, 'EUR', 1, 'COMPLETED', '', 4, false,"
        " '{now}', '{now}', '{now}')",
    ],
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """The three services' databases, migrated and holding one consistent completed purchase."""
    urls = {}
    for service, statements in GOOD.items():
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / service}.db"
        else:
            url = request.getfixturevalue("postgres").create_database(f"{service}_{uuid.uuid4().hex[:8]}")
        engine = create_engine(url)
        await migrations.upgrade(engine, SERVICES / service / "migrations")
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(sa.text(statement.format(now=NOW)))
        await engine.dispose()
        urls[service] = url
    yield urls


async def break_with(url: str, statement: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.execute(sa.text(statement.format(now=NOW)))
    await engine.dispose()


async def check(urls: dict[str, str]) -> invariants.Report:
    return await invariants.check(urls["ledger"], urls["inventory"], urls["payments"])


async def test_a_consistent_system_passes(databases: dict[str, str]) -> None:
    report = await check(databases)
    assert report.ok, report.violations
    assert report.payments_by_status == {"COMPLETED": 1}


@pytest.mark.parametrize(
    ("service", "fault", "violation"),
    [
        (
            "ledger",
            "UPDATE journal_lines SET amount_minor = 1300 WHERE entry_id = 'c1' AND account_id = 'shop'",
            "journal entry c1 sums to 50, not 0",
        ),
        (
            "ledger",
            "UPDATE accounts SET balance_minor = 9999 WHERE account_id = 'payer'",
            "account payer balance 9999 != its journal lines 3750",
        ),
        (
            "ledger",
            "UPDATE accounts SET held_minor = 4000 WHERE account_id = 'payer'",
            "available -250: none may be negative",
        ),
        ("ledger", "UPDATE holds SET status = 'HELD'", "holds 0 but its open holds add up to 1250"),
        ("ledger", "UPDATE holds SET amount_minor = 1", "payment p1 is for 1250 EUR but the ledger held 1 EUR"),
        ("inventory", "UPDATE items SET quantity_available = 5", "mug available 5 + reserved 0 + sold 1 != received 3"),
        (
            "inventory",
            "UPDATE reservations SET status = 'RELEASED'",
            "mug counts 1 committed but its reservations say 0",
        ),
        ("payments", "UPDATE payments SET status = 'CANCELLING'", "payments: p1 is still CANCELLING"),
        (
            "payments",
            "UPDATE payments SET status = 'FAILED'",
            "payment p1 is FAILED but its hold is CAPTURED and its reservation COMMITTED",
        ),
    ],
)
async def test_each_fault_is_reported(databases: dict[str, str], service: str, fault: str, violation: str) -> None:
    await break_with(databases[service], fault)

    report = await check(databases)

    assert not report.ok
    assert any(violation in line for line in report.violations), report.violations
