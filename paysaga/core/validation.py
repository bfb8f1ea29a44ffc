"""Checks every service applies to what clients send: ids, currencies, amounts, text sizes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

import pycountry

from paysaga.core.errors import InvalidArgument

# Large enough for any real payment, small enough that sums of many never overflow int64.
MAX_AMOUNT_MINOR = 10**15
MAX_QUANTITY = 1_000_000
MAX_TEXT_CHARS = 200
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
SKU_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CURRENCIES = frozenset(currency.alpha_3 for currency in pycountry.currencies)


def uuid_text(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID, got {value[:80]!r}") from None
    return str(parsed)


def currency(value: str, field: str = "currency") -> str:
    if value not in CURRENCIES:
        raise InvalidArgument(f"{field} must be an ISO 4217 code such as EUR, got {value[:16]!r}")
    return value


def positive_amount(amount_minor: int, field: str = "amount.amount_minor") -> int:
    if amount_minor <= 0:
        raise InvalidArgument(f"{field} must be positive, got {amount_minor}")
    if amount_minor > MAX_AMOUNT_MINOR:
        raise InvalidArgument(f"{field} must be at most {MAX_AMOUNT_MINOR}, got {amount_minor}")
    return amount_minor


def positive_quantity(quantity: int, field: str = "quantity") -> int:
    if not 0 < quantity <= MAX_QUANTITY:
        raise InvalidArgument(f"{field} must be between 1 and {MAX_QUANTITY}, got {quantity}")
    return quantity


def sku(value: str, field: str = "sku") -> str:
    if not SKU_PATTERN.fullmatch(value):
        raise InvalidArgument(f"{field} must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-', got {value[:80]!r}")
    return value


def text(value: str, field: str, *, required: bool = False, max_chars: int = MAX_TEXT_CHARS) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required")
    if len(value) > max_chars:
        raise InvalidArgument(f"{field} must be at most {max_chars} characters, got {len(value)}")
    return value


def page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, got {value}")
    return value or DEFAULT_PAGE_SIZE


def page_token(value: str) -> int:
    """Tokens are opaque to clients; ours are the last seen row number."""
    if not value:
        return 0
    if not value.isdigit() or len(value) > 18:
        raise InvalidArgument("page_token is not one this service issued")
    return int(value)


def next_page_token(rows: Sequence[Any], size: int, number_column: str) -> str:
    """The token of the page after rows (fetched with one row to spare), or "" on the last page."""
    return str(getattr(rows[size - 1], number_column)) if len(rows) > size else ""
