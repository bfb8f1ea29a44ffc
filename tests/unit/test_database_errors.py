"""How a database error is classified decides whether an event is retried forever or parked."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError

from paysaga.runtime.messaging.consumer import is_operating_error
from paysaga.runtime.storage.database import is_retryable, is_unavailable


class DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(sqlstate: str) -> DBAPIError:
    return DBAPIError("UPDATE accounts ...", {}, DriverError(sqlstate))


@pytest.mark.parametrize("sqlstate", ["40001", "40P01", "23505"])
def test_conflicts_with_concurrent_transactions_are_retryable_not_outages(sqlstate: str) -> None:
    assert is_retryable(wrapped(sqlstate))
    assert not is_unavailable(wrapped(sqlstate))


@pytest.mark.parametrize(
    "error",
    [
        wrapped("08003"),  # connection does not exist
        wrapped("57P01"),  # server shutting down
        wrapped("57P03"),  # server starting up or recovering
        wrapped("53300"),  # too many clients
        OperationalError("SELECT 1", {}, Exception("database is locked")),
        socket.gaierror("postgres: name not known"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
    ],
)
def test_outages_are_operating_errors_that_never_park_an_event(error: BaseException) -> None:
    assert is_operating_error(error)


@pytest.mark.parametrize("error", [wrapped("22003"), wrapped("23503"), ValueError("bad amount"), AssertionError()])
def test_a_handlers_own_failures_are_neither(error: BaseException) -> None:
    assert not is_operating_error(error)
    assert not is_retryable(error)
