"""Which gRPC status a client sees for each kind of domain error."""

from __future__ import annotations

import grpc
import pytest

from paysaga.core.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound
from paysaga.runtime.grpc_server import status_of


class PaymentNotFound(NotFound):
    """A kind of error a service might add later."""


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (PaymentNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (DomainError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_a_domain_error_has_the_status_of_its_nearest_kind(error: DomainError, status: grpc.StatusCode) -> None:
    assert status_of(error) is status
