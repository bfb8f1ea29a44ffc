"""Admission by tier: under overload standard purchases are refused first, priority next,
critical last; the shares are read from one setting and checked."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from paysaga.core.errors import ResourceExhausted
from services.payments import config
from services.payments.adapters import views
from services.payments.admission import Admission
from services.payments.domain import PaymentLimits, admission_limits


def test_each_tier_gets_its_share_of_the_in_flight_limit() -> None:
    rules = PaymentLimits(max_in_flight=500)
    assert admission_limits(rules) == {"standard": 350, "priority": 450, "critical": 500}
    tiny = PaymentLimits(max_in_flight=1, admission_shares=(("standard", 0.1), ("priority", 0.5), ("critical", 1.0)))
    assert admission_limits(tiny) == {"standard": 1, "priority": 1, "critical": 1}  # never none


def test_shares_are_parsed_and_checked() -> None:
    assert config.admission_shares("standard=0.5") == (("standard", 0.5), ("priority", 0.9), ("critical", 1.0))
    for bad, reason in (
        ("gold=0.5", "unknown tier"),
        ("standard=x", "not a number"),
        ("standard=0", "above 0"),
        ("critical=1.5", "at most 1"),
        ("standard=0.95", "must not decrease"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=reason):
            config.admission_shares(bad)


async def test_standard_is_refused_first_and_critical_last(monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight = 0

    async def count(_database: Any) -> int:
        return in_flight

    monkeypatch.setattr(views, "count_in_flight", count)
    admission = Admission(database=None, limits={"standard": 7, "priority": 9, "critical": 10})  # type: ignore[arg-type]

    async def outcome(tier: str) -> str:
        admission._refresh_at = float("-inf")  # count again, as after REFRESH_S
        try:
            async with admission.admitted(tier):
                return "admitted"
        except ResourceExhausted as refusal:
            assert "retry in a moment" in str(refusal)
            return "refused"

    in_flight = 6
    assert [await outcome(tier) for tier in ("standard", "priority", "critical")] == ["admitted"] * 3
    in_flight = 8
    assert [await outcome(tier) for tier in ("standard", "priority", "critical")] == ["refused", "admitted", "admitted"]
    in_flight = 9
    assert [await outcome(tier) for tier in ("standard", "priority", "critical")] == ["refused", "refused", "admitted"]
    in_flight = 10
    assert [await outcome(tier) for tier in ("standard", "priority", "critical")] == ["refused"] * 3
