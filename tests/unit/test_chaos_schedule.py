"""The chaos suite's faults come from its seed alone, and every run includes the faults the suite
promises: a NATS node lost and a NATS node cut off by a partition."""

from __future__ import annotations

import random

import pytest

from tests.chaos.run import NATS_NODES, TARGETS, schedule


@pytest.mark.parametrize("seed", range(50))
def test_a_seed_gives_the_same_faults_and_always_a_nats_loss_and_a_nats_partition(seed: int) -> None:
    faults = schedule(random.Random(seed), 6, 60.0)
    assert faults == schedule(random.Random(seed), 6, 60.0)
    assert any(fault.kind == "kill-nats" for fault in faults)
    assert any(fault.kind == "partition" and fault.target in NATS_NODES for fault in faults)
    assert all(fault.target in TARGETS[fault.kind] for fault in faults)
    starts = [fault.start_s for fault in faults]
    assert starts == sorted(starts) and all(0 <= start < 60.0 for start in starts)
    assert all(1.0 <= fault.duration_s <= 6.0 for fault in faults)


def test_different_seeds_give_different_faults() -> None:
    assert schedule(random.Random(1), 6, 60.0) != schedule(random.Random(2), 6, 60.0)
