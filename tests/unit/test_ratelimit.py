"""The per-client token buckets, on a clock of our own: bursts, refills, classes and clients apart."""

from __future__ import annotations

import pytest

from paysaga.runtime.security import ratelimit
from paysaga.runtime.security.ratelimit import Limit, RateLimiter, limits_from_claim, parse_limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_calls_wait_for_the_refill() -> None:
    clock = Clock()
    limiter = RateLimiter({"read": Limit(10, 3), "write": Limit(1, 1), "admin": Limit(100, 100)}, clock)

    assert [limiter.take("alice", "read") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("alice", "read") == pytest.approx(0.1)  # one token comes back every 0.1 s
    clock.now += 0.1
    assert limiter.take("alice", "read") == 0
    clock.now += 10  # a long pause refills up to the burst, not beyond
    assert [limiter.take("alice", "read") for _ in range(4)][-1] > 0


def test_clients_and_classes_have_buckets_of_their_own() -> None:
    limiter = RateLimiter({"read": Limit(1, 1), "write": Limit(1, 1), "admin": Limit(1, 1)}, Clock())

    assert limiter.take("mallory", "write") == 0
    assert limiter.take("mallory", "write") > 0  # mallory is out of writes...
    assert limiter.take("mallory", "read") == 0  # ... not of reads
    assert limiter.take("alice", "write") == 0  # and alice is not held up by her


def test_a_clients_own_limits_replace_the_defaults_for_their_classes() -> None:
    limiter = RateLimiter({"read": Limit(1, 1), "write": Limit(1, 1), "admin": Limit(1, 1)}, Clock())
    own = {"write": Limit(50, 5)}

    assert [limiter.take("big-shop", "write", own) for _ in range(5)] == [0] * 5
    assert limiter.take("big-shop", "write", own) > 0
    assert limiter.take("big-shop", "read", own) == 0 and limiter.take("big-shop", "read", own) > 0


def test_idle_clients_are_forgotten_beyond_the_most_tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "MAX_TRACKED", 3)
    limiter = RateLimiter({"read": Limit(1, 1), "write": Limit(1, 1), "admin": Limit(1, 1)}, Clock())
    for client in ("a", "b", "c", "d"):
        limiter.take(client, "read")
    assert limiter.take("a", "read") == 0, "a's bucket was the oldest: forgotten, hence full again"


def test_limits_are_read_from_settings_and_from_a_token_claim() -> None:
    limits = parse_limits("write=20/40, read=5")
    assert (limits["write"], limits["read"], limits["admin"]) == (
        Limit(20, 40),
        Limit(5, 5),
        ratelimit.DEFAULT_LIMITS["admin"],
    )
    with pytest.raises(ValueError, match="unknown rate limit class 'delete'"):
        parse_limits("delete=1/1")
    with pytest.raises(ValueError, match="write CLASS=RATE/BURST"):
        parse_limits("write=fast")
    with pytest.raises(ValueError, match="positive rate"):
        parse_limits("write=0/10")
    assert limits_from_claim({"write": [2, 4], "read": "lots", "delete": [1, 1]}) == {"write": Limit(2, 4)}
    assert limits_from_claim(None) == {}
