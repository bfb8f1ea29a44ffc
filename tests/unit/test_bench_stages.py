"""The benchmark's stages: each hop of a saga that went the whole happy path, from its create
call to each event as stored; a saga missing an event is left out, not counted as zero."""

from __future__ import annotations

import pytest

from bench.stages import HAPPY_PATH, stages


def test_each_hop_is_the_time_between_its_two_events_and_the_last_row_is_the_whole() -> None:
    created = {"a": 100.0, "b": 200.0, "missing": 300.0}
    times = {
        "a": dict(zip(HAPPY_PATH, (100.010, 100.020, 100.040, 100.045, 100.050), strict=True)),
        "b": dict(zip(HAPPY_PATH, (200.030, 200.040, 200.060, 200.065, 200.070), strict=True)),
        "missing": {"PaymentRequested": 300.01},
    }

    rows = stages(created, times)

    assert [row.name for row in rows] == [
        "create → PaymentRequested",
        "PaymentRequested → FundsHeld",
        "FundsHeld → StockReserved",
        "StockReserved → FundsCaptured",
        "FundsCaptured → PaymentCompleted",
        "create → PaymentCompleted",
    ]
    assert all(row.sagas == 2 for row in rows)
    assert rows[0].p50_ms == pytest.approx(10.0) and rows[0].p99_ms == pytest.approx(30.0)
    assert rows[2].p50_ms == pytest.approx(20.0)
    assert rows[-1].p50_ms == pytest.approx(50.0) and rows[-1].p99_ms == pytest.approx(70.0)


def test_no_saga_gives_empty_rows_not_an_error() -> None:
    assert all(row.sagas == 0 and row.p99_ms == 0.0 for row in stages({}, {}))
