"""Small waiting helpers for background tasks that must stop promptly when asked."""

from __future__ import annotations

import asyncio
import contextlib


async def sleep_or_stop(stop: asyncio.Event, delay_s: float) -> None:
    """Sleep delay_s, or less if stop is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)


async def wait_any(events: list[asyncio.Event], timeout_s: float) -> None:
    """Return when any of events is set, or after timeout_s."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
