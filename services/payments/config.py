"""The payments service's own settings, beside every service's: the saga deadline, the fraud
rules and their statistics (flags and PAYSAGA_* variables, as the common settings)."""

from __future__ import annotations

import argparse
from pathlib import Path

from paysaga.runtime.settings import Option, ServiceSettings, positive_float, positive_int
from services.payments.domain import SLA_TIERS, PaymentLimits
from services.payments.rules.reload import load
from services.payments.rules.ruleset import RulesError

DEFAULTS = PaymentLimits()


def admission_shares(text: str) -> tuple[tuple[str, float], ...]:
    """'standard=0.7,priority=0.9,critical=1': each tier's share of --max-in-flight, between 0 and
    1, not decreasing from standard to critical (a stricter tier is never refused first)."""
    shares = dict(DEFAULTS.admission_shares)
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        tier, _, value = part.partition("=")
        if tier not in SLA_TIERS:
            raise argparse.ArgumentTypeError(f"unknown tier {tier!r} (tiers: {', '.join(SLA_TIERS)})")
        try:
            share = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{tier}: {value!r} is not a number") from None
        if not 0 < share <= 1:
            raise argparse.ArgumentTypeError(f"{tier}: a share is above 0 and at most 1, got {value}")
        shares[tier] = share
    ordered = [shares[tier] for tier in SLA_TIERS]
    if ordered != sorted(ordered):
        raise argparse.ArgumentTypeError(f"shares must not decrease from standard to critical, got {text!r}")
    return tuple((tier, shares[tier]) for tier in SLA_TIERS)


def rules_file(text: str) -> str:
    """A rules file that can be used now ("" for the built-in rules): the service does not start
    with a broken one."""
    if text:
        try:
            load(Path(text))
        except RulesError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return text


_SHARES = ",".join(f"{tier}={share:g}" for tier, share in DEFAULTS.admission_shares)
# Each option's key (its flag without dashes) names the PaymentLimits field it sets.
OPTIONS = (
    Option(
        "--saga-timeout-s",
        "PAYSAGA_SAGA_TIMEOUT_S",
        str(DEFAULTS.saga_timeout_s),
        "a payment not done by then is undone and fails",
        positive_float,
    ),
    Option(
        "--review-timeout-s",
        "PAYSAGA_REVIEW_TIMEOUT_S",
        str(DEFAULTS.review_timeout_s),
        "a purchase held for review (UNDER_REVIEW) and not decided by then is declined, its hold released",
        positive_float,
    ),
    Option(
        "--max-amount-minor",
        "PAYSAGA_MAX_AMOUNT_MINOR",
        str(DEFAULTS.max_amount_minor),
        "the built-in amount_cap rule's cap (limits.amount_minor_max in a rules file)",
        positive_int,
    ),
    Option(
        "--velocity-limit",
        "PAYSAGA_VELOCITY_LIMIT",
        str(DEFAULTS.velocity_limit),
        "the built-in payer_velocity rule's limit per window (limits.velocity_limit)",
        positive_int,
    ),
    Option(
        "--velocity-window-s",
        "PAYSAGA_VELOCITY_WINDOW_S",
        str(DEFAULTS.velocity_window_s),
        "the window payer.velocity counts the payer's purchases in (limits.velocity_window_s)",
        positive_float,
    ),
    Option(
        "--rules-file",
        "PAYSAGA_RULES_FILE",
        DEFAULTS.rules_file,
        "the fraud rules (YAML, reloaded when it changes); empty: the built-in amount_cap and payer_velocity",
        rules_file,
    ),
    Option(
        "--stats-bucket-s",
        "PAYSAGA_STATS_BUCKET_S",
        str(DEFAULTS.stats_bucket_s),
        "the rolling statistics' time bucket (count_1m counts the buckets of the last minute)",
        positive_float,
    ),
    Option(
        "--stats-half-life-s",
        "PAYSAGA_STATS_HALF_LIFE_S",
        str(DEFAULTS.stats_half_life_s),
        "amount_ew_mean and amount_ew_stddev weigh an amount half as much every half-life",
        positive_float,
    ),
    Option(
        "--baseline-buckets",
        "PAYSAGA_BASELINE_BUCKETS",
        str(DEFAULTS.baseline_buckets),
        "the buckets before the current one a region's or merchant's baseline is taken over",
        positive_int,
    ),
    Option(
        "--spike-z",
        "PAYSAGA_SPIKE_Z",
        str(DEFAULTS.spike_z),
        "a spike is this many standard deviations above the baseline ...",
        positive_float,
    ),
    Option(
        "--spike-min-count",
        "PAYSAGA_SPIKE_MIN_COUNT",
        str(DEFAULTS.spike_min_count),
        "... with at least this many attempts in the bucket ...",
        positive_int,
    ),
    Option(
        "--spike-min-buckets",
        "PAYSAGA_SPIKE_MIN_BUCKETS",
        str(DEFAULTS.spike_min_buckets),
        "... over a baseline of at least this many buckets",
        positive_int,
    ),
    Option(
        "--spike-hold-buckets",
        "PAYSAGA_SPIKE_HOLD_BUCKETS",
        str(DEFAULTS.spike_hold_buckets),
        "a spike stays active (region.spike, merchant.spike) for this many buckets after its own",
        positive_int,
    ),
    Option(
        "--max-in-flight",
        "PAYSAGA_MAX_IN_FLIGHT",
        str(DEFAULTS.max_in_flight),
        "purchases not yet ended above which CreatePayment refuses new ones (RESOURCE_EXHAUSTED)",
        positive_int,
    ),
    Option(
        "--admission-shares",
        "PAYSAGA_ADMISSION_SHARES",
        _SHARES,
        "under overload, a tier's purchases are taken on while fewer than this share of --max-in-flight are in flight",
        admission_shares,
    ),
    Option(
        "--max-watches-per-client",
        "PAYSAGA_MAX_WATCHES_PER_CLIENT",
        str(DEFAULTS.max_watches_per_client),
        "WatchPayment streams one client may hold open on one process (more: RESOURCE_EXHAUSTED)",
        positive_int,
    ),
    Option(
        "--watch-max-s",
        "PAYSAGA_WATCH_MAX_S",
        str(DEFAULTS.watch_max_s),
        "a WatchPayment stream still open after this ends with DEADLINE_EXCEEDED (watch again to go on)",
        positive_float,
    ),
)


def payment_limits(settings: ServiceSettings) -> PaymentLimits:
    return PaymentLimits(**{option.key: settings.options[option.key] for option in OPTIONS})
