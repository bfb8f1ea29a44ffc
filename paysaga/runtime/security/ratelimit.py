"""Per-client rate limits: a token bucket per client identity and class of method, so one noisy
client cannot starve the others.

A call's class is what its rule's scope allows (``read``, ``write``, or ``admin`` for a method only
ops may call), except that a caller holding the service's admin scope (ops) is counted in the
``admin`` class, whose default is generous. Each class has a rate (calls per second, sustained)
and a burst (calls at once); the defaults come from the service's settings, and a client's token
may carry its own (the ``rate_limits`` claim: ``{"write": [rate, burst], ...}``, set when the
client was registered). A call over its limit is refused with RESOURCE_EXHAUSTED before anything
runs, and the trailing metadata says when to try again (``grpc-retry-pushback-ms``, which gRPC's
own retry policy honours, and ``retry-after-ms``).

The buckets live in each process: with N replicas behind a balancer a client gets up to N times
its limit in total. Buckets of clients idle for a while are forgotten (a full bucket is the same as
none).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

CLASSES = ("read", "write", "admin")
MAX_TRACKED = 10_000
EPSILON = 1e-9


@dataclass(frozen=True)
class Limit:
    rate_per_s: float
    burst: float

    def __post_init__(self) -> None:
        if not (self.rate_per_s > 0 and self.burst >= 1):
            raise ValueError(f"a rate limit needs a positive rate and a burst of at least 1, got {self}")


DEFAULT_LIMITS: Mapping[str, Limit] = {
    "read": Limit(200.0, 400.0),
    "write": Limit(100.0, 200.0),
    "admin": Limit(5000.0, 10000.0),
}


def parse_limits(text: str) -> dict[str, Limit]:
    """'read=200/400,write=100/200' -> the classes named, each rate/burst (the others: defaults)."""
    limits = dict(DEFAULT_LIMITS)
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, value = part.partition("=")
        rate, _, burst = value.partition("/")
        if name not in CLASSES:
            raise ValueError(f"unknown rate limit class {name!r}: use {', '.join(CLASSES)}")
        try:
            numbers = float(rate), float(burst or rate)
        except ValueError:
            raise ValueError(f"rate limit {part!r}: write CLASS=RATE/BURST, e.g. write=100/200") from None
        limits[name] = Limit(*numbers)
    return limits


def limits_from_claim(claim: object) -> dict[str, Limit]:
    """A token's rate_limits claim, {"write": [rate, burst], ...}; what does not parse is ignored
    (the defaults apply)."""
    limits: dict[str, Limit] = {}
    if isinstance(claim, dict):
        for name, value in claim.items():
            if name in CLASSES and isinstance(value, list) and len(value) == 2:
                try:
                    limits[name] = Limit(float(value[0]), float(value[1]))
                except (TypeError, ValueError):
                    continue
    return limits


class _Bucket:
    __slots__ = ("tokens", "updated_at")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated_at = now


class RateLimiter:
    def __init__(self, defaults: Mapping[str, Limit] = DEFAULT_LIMITS, clock: Callable[[], float] = time.monotonic):
        self.defaults = dict(defaults)
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def take(self, client: str, kind: str, own: Mapping[str, Limit] | None = None) -> float:
        """Spend one call of client's kind: 0 if allowed, else the seconds until one would be."""
        limit = (own or {}).get(kind) or self.defaults[kind]
        now = self._clock()
        key = (client, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(limit.burst, now)
            if len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)  # the least recently used
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(limit.burst, bucket.tokens + (now - bucket.updated_at) * limit.rate_per_s)
            bucket.updated_at = now
        if bucket.tokens >= 1 - EPSILON:  # refills add up in floating point
            bucket.tokens = max(0.0, bucket.tokens - 1)
            return 0.0
        return (1 - bucket.tokens) / limit.rate_per_s


def retry_after_ms(wait_s: float) -> int:
    return max(1, math.ceil(wait_s * 1000))
