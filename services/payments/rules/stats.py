"""Rolling traffic statistics per payer, merchant and region, the rules' adaptive inputs.

Every payments replica builds the same figures from the same events: each purchase attempt
(PaymentRequested, PaymentRejected) read from the payments stream is added to a time bucket
(``bucket_s``, by the time the attempt was made) of its payer, its merchant and its region. A
figure is a function of the attempts in its window only — integer counts and sums, and a
histogram of amounts in logarithmic bins (the DDSketch idea: a quantile within 1% of the true
value) — so neither the order in which events arrive nor when a replica started changes it: two
replicas that have read the same events agree exactly. The exponentially weighted mean and
standard deviation are computed from the same buckets, weighted by their age, for the same
reason: streaming estimators (river's EWMean and EWVar, P² quantiles) depend on the order and on
the first event seen, and so differ between replicas started at different times.

A window counts the buckets that overlap it: count_1m is the attempts of the last 60 s and up
to one bucket more. Counts are of attempts, blocked ones too (velocity is what a fraudster's retries raise); amounts
are of accepted purchases only (so that a blocked burst of large amounts does not move the
baseline it is judged by). A region's baseline is its count per bucket over the ``baseline``
buckets before the current one, empty buckets included, but none before the key's first attempt
(a key new to the stream, a region first named after an upgrade, has no baseline yet).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

WINDOWS_S = {"count_1m": 60, "count_1h": 3600, "count_24h": 86400}
HISTORY_S = max(WINDOWS_S.values())
RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
KEYS_MAX = 200_000  # per kind; the least recently active are forgotten beyond it
_AMOUNT_FIGURES = ("amount_mean", "amount_stddev", "amount_z", "amount_p50", "amount_p90", "amount_p99")
_NO_AMOUNTS = dict.fromkeys((*_AMOUNT_FIGURES, "amount_ew_mean", "amount_ew_stddev"), 0.0)


def _bin(amount_minor: int) -> int:
    return math.ceil(math.log(max(amount_minor, 1)) / _LOG_GAMMA)


def _bin_value(index: int) -> float:
    return 2 * _GAMMA**index / (_GAMMA + 1)


@dataclass
class _Bucket:
    count: int = 0
    amounts: int = 0
    amount_sum: int = 0
    amount_square_sum: int = 0
    bins: Counter[int] = field(default_factory=Counter)

    def add(self, other: _Bucket, sign: int) -> None:
        self.count += sign * other.count
        self.amounts += sign * other.amounts
        self.amount_sum += sign * other.amount_sum
        self.amount_square_sum += sign * other.amount_square_sum
        for index, number in other.bins.items():
            self.bins[index] += sign * number
            if not self.bins[index]:
                del self.bins[index]


class _Series:
    """One key's buckets over the last HISTORY_S, with their running total."""

    def __init__(self) -> None:
        self.buckets: dict[int, _Bucket] = {}  # bucket number -> bucket, oldest first
        self.total = _Bucket()
        # The earliest bucket of an attempt of this key: a baseline does not reach before it.
        self.first_bucket: int | None = None
        # Changes to buckets before the newest (late attempts, the window moving on): what the
        # weighted sums of the earlier buckets depend on, with the clock's bucket.
        self.older_version = 0
        self.prefix: tuple[tuple[int, ...], tuple[float, float, float]] | None = None
        self.version = 0
        self._quantiles: tuple[int, dict[float, float]] | None = None

    def add(self, number: int, amount_minor: int | None) -> _Bucket:
        if self.first_bucket is None or number < self.first_bucket:
            self.first_bucket = number
        if self.buckets and number < next(reversed(self.buckets)):
            self.older_version += 1
        bucket = self.buckets.get(number)
        if bucket is None:
            late = bool(self.buckets) and number < next(reversed(self.buckets))
            bucket = self.buckets[number] = _Bucket()
            if late:  # an attempt older than the newest bucket: keep them in order
                self.buckets = dict(sorted(self.buckets.items()))
        change = _Bucket(count=1)
        if amount_minor is not None:
            change = _Bucket(1, 1, amount_minor, amount_minor * amount_minor, Counter({_bin(amount_minor): 1}))
        bucket.add(change, 1)
        self.total.add(change, 1)
        self.version += 1
        return bucket

    def forget_before(self, number: int) -> None:
        while self.buckets:
            oldest = next(iter(self.buckets))
            if oldest >= number:
                return
            self.total.add(self.buckets.pop(oldest), -1)
            self.version += 1
            self.older_version += 1

    def newest_first(self) -> Iterator[tuple[int, _Bucket]]:
        return reversed(self.buckets.items())

    def quantiles(self) -> dict[float, float]:
        if self._quantiles is not None and self._quantiles[0] == self.version:
            return self._quantiles[1]
        found = {0.5: 0.0, 0.9: 0.0, 0.99: 0.0}
        if self.total.amounts:
            ranks = {q: q * (self.total.amounts - 1) for q in found}
            seen = 0
            for index in sorted(self.total.bins):
                seen += self.total.bins[index]
                for q, rank in ranks.items():
                    if not found[q] and seen > rank:
                        found[q] = _bin_value(index)
                if all(found.values()):
                    break
        self._quantiles = (self.version, found)
        return found


def _moments(
    weighted: Iterable[tuple[float, _Bucket]], shift: int, start: tuple[float, float, float]
) -> tuple[float, float, float]:
    """start plus the weighted count, sum of deviations from shift and sum of their squares of the
    buckets' amounts (each bucket's deviations in integers)."""
    weight_sum, deviation_sum, square_sum = start
    for weight, bucket in weighted:
        if bucket.amounts:
            weight_sum += weight * bucket.amounts
            deviation_sum += weight * (bucket.amount_sum - bucket.amounts * shift)
            square_sum += weight * (
                bucket.amount_square_sum - 2 * shift * bucket.amount_sum + bucket.amounts * shift * shift
            )
    return weight_sum, deviation_sum, square_sum


class TrafficStats:
    """The statistics of every payer, merchant and region, as of the attempts added so far."""

    def __init__(
        self, bucket_s: float, baseline_buckets: int, started_at_s: float, half_life_s: float = 3600.0
    ) -> None:
        self.bucket_s = bucket_s
        self.baseline_buckets = baseline_buckets
        self._decay = 0.5 ** (bucket_s / half_life_s)  # a bucket's weight against the next one's
        self.clear(started_at_s)

    def clear(self, started_at_s: float) -> None:
        """Forget everything: the attempts are taken in again from started_at_s."""
        # Buckets before this one are not known to be empty: a baseline does not count them.
        self.first_bucket = self.bucket_of(started_at_s)
        self._series: dict[str, dict[str, _Series]] = {"payer": {}, "merchant": {}, "region": {}}
        self.events = 0
        # Whether the attempts up to the start have all been taken in (rules read it as stats.ready).
        self.ready = False

    def bucket_of(self, time_s: float) -> int:
        return math.floor(time_s / self.bucket_s)

    def add(
        self, time_s: float, payer: str, merchant: str, region: str, amount_minor: int, accepted: bool
    ) -> dict[str, int]:
        """Count one attempt; the count of its bucket for its merchant and region (what a spike
        detector compares with the baseline)."""
        number = self.bucket_of(time_s)
        oldest = self.bucket_of(time_s - HISTORY_S)
        amount = amount_minor if accepted else None
        counts: dict[str, int] = {}
        for kind, key, with_amount in (
            ("payer", payer, amount),
            ("merchant", merchant, amount),
            ("region", region, None),
        ):
            if not key:
                continue
            series = self._series_of(kind, key)
            counts[kind] = series.add(number, with_amount).count
            series.forget_before(oldest)
        self.events += 1
        return counts

    def _series_of(self, kind: str, key: str) -> _Series:
        keyed = self._series[kind]
        series = keyed.pop(key, None) or _Series()
        keyed[key] = series  # most recently active last
        if len(keyed) > KEYS_MAX:
            del keyed[next(iter(keyed))]
        return series

    def counts(self, kind: str, key: str, now_s: float) -> dict[str, int]:
        series = self._series[kind].get(key)
        result = dict.fromkeys(WINDOWS_S, 0)
        if series is None:
            return result
        current = self.bucket_of(now_s)
        series.forget_before(self.bucket_of(now_s - HISTORY_S))
        result["count_24h"] = series.total.count
        for number, bucket in series.newest_first():
            if number > current:
                continue  # an attempt stamped ahead of this process's clock
            end_s = (number + 1) * self.bucket_s
            if end_s <= now_s - WINDOWS_S["count_1h"]:
                break
            result["count_1h"] += bucket.count
            if end_s > now_s - WINDOWS_S["count_1m"]:
                result["count_1m"] += bucket.count
        return result

    def bucket_count(self, kind: str, key: str, bucket: int) -> int:
        series = self._series[kind].get(key)
        found = None if series is None else series.buckets.get(bucket)
        return 0 if found is None else found.count

    def amounts(self, kind: str, key: str, amount_minor: int, now_s: float) -> dict[str, Any]:
        """The accepted amounts of the last 24 h of a payer or merchant, where amount_minor stands
        among them (amount_z, 0 without a spread), and their exponentially weighted mean and
        standard deviation (each amount weighs half as much every half_life_s)."""
        series = self._series[kind].get(key)
        if series is None or not series.total.amounts:
            return {"samples": 0, **_NO_AMOUNTS}
        total = series.total
        count, amount_sum = total.amounts, total.amount_sum
        mean = amount_sum / count
        # In integers until the last division: floats lose the spread of large amounts.
        stddev = math.sqrt((count * total.amount_square_sum - amount_sum * amount_sum) / (count * count))
        quantiles = series.quantiles()
        ew_mean, ew_stddev = self._weighted(series, self.bucket_of(now_s))
        return {
            "samples": total.amounts,
            "amount_mean": mean,
            "amount_stddev": stddev,
            "amount_p50": quantiles[0.5],
            "amount_p90": quantiles[0.9],
            "amount_p99": quantiles[0.99],
            "amount_z": (amount_minor - mean) / stddev if stddev else 0.0,
            "amount_ew_mean": ew_mean,
            "amount_ew_stddev": ew_stddev,
        }

    def _weighted(self, series: _Series, current: int) -> tuple[float, float]:
        """The exponentially weighted mean and standard deviation of the series' amounts, from its
        buckets in bucket order, so the same on every replica with the same buckets. Each
        bucket's moments are taken about a shift near the amounts (the oldest bucket's mean) in
        integers, so that large amounts keep their spread. The buckets before the current one are
        summed once per bucket of time (and again when a late attempt or the window changes them):
        a purchase adds only the current bucket's share."""
        buckets = series.buckets
        oldest = next(bucket for bucket in buckets.values() if bucket.amounts)
        shift = oldest.amount_sum // oldest.amounts
        newest = next(reversed(buckets))
        token = (series.older_version, current, shift, newest, buckets[newest].amounts if newest < current else -1)
        if series.prefix is None or series.prefix[0] != token:
            weights = self._decay
            earlier = (
                (weights ** (current - number), bucket) for number, bucket in buckets.items() if number < current
            )
            series.prefix = (token, _moments(earlier, shift, (0.0, 0.0, 0.0)))
        now_and_ahead: list[tuple[float, _Bucket]] = []
        for number, bucket in reversed(buckets.items()):
            if number < current:
                break
            now_and_ahead.append((1.0, bucket))
        weight_sum, deviation_sum, square_sum = _moments(reversed(now_and_ahead), shift, series.prefix[1])
        offset = deviation_sum / weight_sum
        return shift + offset, math.sqrt(max(square_sum / weight_sum - offset * offset, 0.0))

    def baseline(self, kind: str, key: str, bucket: int, count: int) -> dict[str, Any]:
        """How count, the attempts in one bucket, compares with the buckets before it: their mean
        and standard deviation per bucket, how many buckets that is, and the z-score (against at
        least the Poisson spread of the mean, and at least 1, so a quiet key is not a spike for
        one attempt)."""
        series = self._series[kind].get(key)
        seen = bucket if series is None or series.first_bucket is None else series.first_bucket
        first = max(bucket - self.baseline_buckets, self.first_bucket, seen)
        buckets = max(bucket - first, 0)
        total = square_total = 0
        if series is not None and buckets:
            for number, found in series.newest_first():
                if number >= bucket:
                    continue
                if number < first:
                    break
                total += found.count
                square_total += found.count * found.count
        mean = total / buckets if buckets else 0.0
        stddev = math.sqrt((buckets * square_total - total * total) / (buckets * buckets)) if buckets else 0.0
        spread = max(stddev, math.sqrt(mean), 1.0)
        return {
            "baseline_mean": mean,
            "baseline_stddev": stddev,
            "baseline_buckets": buckets,
            "rate_z": (count - mean) / spread,
        }
