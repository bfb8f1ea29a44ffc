"""Checks every service applies to what clients send: ids, currencies, amounts, text sizes."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

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
REGIONS = frozenset(country.alpha_2 for country in pycountry.countries)


def uuid_text(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID, got {value[:80]!r}") from None
    return str(parsed)


def region(value: str, field: str = "region") -> str:
    """An ISO 3166-1 alpha-2 country code, or "" (not given)."""
    if value and value not in REGIONS:
        raise InvalidArgument(f"{field} must be an ISO 3166-1 alpha-2 country code such as FR, got {value[:16]!r}")
    return value


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


@dataclass(frozen=True)
class PageRequest:
    """Which page a List call asks for: up to size rows after the row number after."""

    size: int
    after: int


def page_request(page_size: int, page_token: str) -> PageRequest:
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 0 and {MAX_PAGE_SIZE}, got {page_size}")
    # Tokens are opaque to clients; ours are the last row number seen.
    if page_token and (not (page_token.isascii() and page_token.isdigit()) or len(page_token) > 18):
        raise InvalidArgument("page_token is not one this service issued")
    return PageRequest(page_size or DEFAULT_PAGE_SIZE, int(page_token or 0))
