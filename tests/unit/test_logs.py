"""Logging: one JSON object per line with the service, the event, its fields and bound context."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from paysaga.runtime.logs import configure_logging, log_context


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("ledger", "INFO", stream)
    yield stream
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_event_is_one_json_line_with_its_fields(captured: io.StringIO) -> None:
    logging.getLogger("paysaga.test").info("hold.placed", extra={"amount_minor": 1250, "currency": "EUR"})

    [record] = lines(captured)
    assert record["event"] == "hold.placed"
    assert record["service"] == "ledger" and record["level"] == "info" and record["logger"] == "paysaga.test"
    assert (record["amount_minor"], record["currency"]) == (1250, "EUR")
    assert str(record["ts"]).endswith("+00:00")


def test_bound_context_appears_on_every_line_inside_it_and_not_after(captured: io.StringIO) -> None:
    log = logging.getLogger("paysaga.test")
    with log_context(saga_id="7c1e", payment_id="7c1e"):
        log.info("first")
        with log_context(event_id="e-1"):
            log.warning("second")
    log.info("third")

    first, second, third = lines(captured)
    assert first["saga_id"] == "7c1e" and "event_id" not in first
    assert second["saga_id"] == "7c1e" and second["event_id"] == "e-1"
    assert "saga_id" not in third


def test_exceptions_are_kept_inside_the_one_line(captured: io.StringIO) -> None:
    try:
        raise ValueError("bad amount")
    except ValueError:
        logging.getLogger("paysaga.test").exception("handler.failed")

    [record] = lines(captured)
    assert "ValueError: bad amount" in str(record["exception"])


def test_configuring_again_replaces_the_handler_instead_of_doubling_lines(captured: io.StringIO) -> None:
    configure_logging("ledger", "INFO", captured)
    logging.getLogger("paysaga.test").info("once")

    assert [record["event"] for record in lines(captured)] == ["once"]
