"""The payments service's own settings, beside every service's: the saga deadline and the
threshold rules (flags and PAYSAGA_* variables, as the common settings)."""

from __future__ import annotations

from paysaga.runtime.settings import Option, ServiceSettings, positive_float, positive_int
from services.payments.domain import PaymentLimits

DEFAULTS = PaymentLimits()
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
        "--max-amount-minor",
        "PAYSAGA_MAX_AMOUNT_MINOR",
        str(DEFAULTS.max_amount_minor),
        "larger payments are REJECTED",
        positive_int,
    ),
    Option(
        "--velocity-limit",
        "PAYSAGA_VELOCITY_LIMIT",
        str(DEFAULTS.velocity_limit),
        "payments per payer per window before REJECTED",
        positive_int,
    ),
    Option(
        "--velocity-window-s",
        "PAYSAGA_VELOCITY_WINDOW_S",
        str(DEFAULTS.velocity_window_s),
        "the velocity rule's window",
        positive_float,
    ),
    Option(
        "--max-in-flight",
        "PAYSAGA_MAX_IN_FLIGHT",
        str(DEFAULTS.max_in_flight),
        "purchases not yet ended above which CreatePayment refuses new ones (RESOURCE_EXHAUSTED)",
        positive_int,
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
