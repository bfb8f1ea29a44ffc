"""Domain errors: what went wrong, in words the caller can act on. No gRPC here; the servicers
map these to status codes through one table (paysaga.runtime.grpc_server)."""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses; nothing was changed."""


class InvalidArgument(DomainError):
    pass


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class PermissionDenied(DomainError):
    """The caller may not do this with this record (it is not theirs); says nothing about records
    the caller may not see."""


class DeadlineExceeded(DomainError):
    """It took longer than allowed; nothing was changed, and it may be asked for again."""


class ResourceExhausted(DomainError):
    """Too busy to take this on now; nothing was changed, and the same request may be sent again
    later."""
