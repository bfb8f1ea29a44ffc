"""The spike detector: a region's or a merchant's attempts in one bucket far above its baseline.

After each attempt the statistics take in, the attempt's bucket is compared with the buckets
before it (TrafficStats.baseline): a spike is at least ``min_count`` attempts, a z-score of at
least ``z``, over a baseline of at least ``min_buckets`` buckets. A key's spike is detected once
per bucket and stays active for ``hold_buckets`` buckets after (what rules read as
``region.spike`` and ``merchant.spike``). Detection depends only on the attempts and their times,
so every replica detects the same spikes in the same buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.payments.rules.stats import TrafficStats

ACTIVE_KEYS_MAX = 10_000


@dataclass(frozen=True)
class SpikeSettings:
    z: float = 4.0
    min_count: int = 20
    min_buckets: int = 10
    hold_buckets: int = 5


@dataclass(frozen=True)
class Spike:
    kind: str  # "region" or "merchant"
    key: str
    bucket: int
    bucket_start_s: float
    bucket_s: float
    count: int
    baseline_mean: float
    baseline_stddev: float
    baseline_buckets: int
    z: float


class SpikeDetector:
    def __init__(self, stats: TrafficStats, settings: SpikeSettings) -> None:
        self.stats = stats
        self.settings = settings
        self.found: list[Spike] = []  # detected, not yet taken by whoever announces them
        self._detected: dict[tuple[str, str], int] = {}  # (kind, key) -> the bucket of its last spike

    def clear(self) -> None:
        self.found = []
        self._detected = {}

    def observe(self, time_s: float, counts: dict[str, int], keys: dict[str, str]) -> None:
        """After stats.add: counts and keys by kind ("region", "merchant") of that attempt."""
        bucket = self.stats.bucket_of(time_s)
        for kind in ("region", "merchant"):
            key, count = keys.get(kind, ""), counts.get(kind, 0)
            if not key or count < self.settings.min_count or self._detected.get((kind, key), -1) >= bucket:
                continue
            figures = self.stats.baseline(kind, key, bucket, count)
            if figures["baseline_buckets"] < self.settings.min_buckets or figures["rate_z"] < self.settings.z:
                continue
            self._remember(kind, key, bucket)
            self.found.append(
                Spike(
                    kind,
                    key,
                    bucket,
                    bucket * self.stats.bucket_s,
                    self.stats.bucket_s,
                    count,
                    figures["baseline_mean"],
                    figures["baseline_stddev"],
                    figures["baseline_buckets"],
                    figures["rate_z"],
                )
            )

    def _remember(self, kind: str, key: str, bucket: int) -> None:
        self._detected.pop((kind, key), None)
        self._detected[(kind, key)] = bucket
        if len(self._detected) > ACTIVE_KEYS_MAX:
            del self._detected[next(iter(self._detected))]

    def active(self, kind: str, key: str, now_s: float) -> bool:
        detected = self._detected.get((kind, key))
        return detected is not None and self.stats.bucket_of(now_s) - detected <= self.settings.hold_buckets
