"""Who is who: the identity names every certificate carries and every check compares.

A certificate's identity is a SPIFFE-style URI SAN: ``spiffe://paysaga/<service>`` for our
services and ``spiffe://paysaga/client/<name>`` for external clients. Names are DNS labels.
"""

from __future__ import annotations

import re

TRUST_DOMAIN = "paysaga"
NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class InvalidName(ValueError):
    """A service or client name that no identity may carry; the message says what is allowed."""


def service_identity(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{name}"


def client_identity(name: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/client/{name}"


CLIENT_PREFIX = client_identity("")


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"invalid name {name!r}: use 1 to 63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit"
        )
    return name
