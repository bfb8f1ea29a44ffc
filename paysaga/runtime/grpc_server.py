"""Build a gRPC server that requires mTLS and carries health checking and reflection.

``create_server`` only builds and binds, so tests can bind port 0 and talk to the real server
over a real channel; ``serve`` in paysaga.runtime.service_process runs the lifecycle around it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from paysaga.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from paysaga.runtime.security.authz import AuthorizationInterceptor, Authorizer, Rule
from paysaga.runtime.security.ratelimit import RateLimiter
from paysaga.runtime.security.revocation import RevocationList
from paysaga.runtime.security.tokens import TokenVerifier
from paysaga.runtime.storage.backends import ReplicaUnavailable
from paysaga.runtime.storage.database import is_unavailable

log = logging.getLogger(__name__)

# A purchase request is a few hundred bytes; refuse anything absurd before parsing it.
MAX_MESSAGE_BYTES = 1024 * 1024
SERVER_OPTIONS = (
    # gRPC enables SO_REUSEPORT by default: a second process on the same port would silently take
    # half the traffic. One listener per port, and a clear error for the second.
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
)


STATUS_OF_ERROR: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_of(error: DomainError) -> grpc.StatusCode:
    """The status of the nearest class in error's hierarchy that has one: a new subclass of
    NotFound is NOT_FOUND without a line here. A DomainError of no kind above is INTERNAL."""
    for kind in type(error).__mro__:
        if kind in STATUS_OF_ERROR:
            return STATUS_OF_ERROR[kind]
    return grpc.StatusCode.INTERNAL


def domain_errors_as_status(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Wrap a unary servicer method: a DomainError becomes its gRPC status with the error's message."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as error:  # noqa: BLE001 - abort_for re-raises what is not ours to answer
            await abort_for(context, error)

    return wrapper


async def abort_for(context: grpc.aio.ServicerContext, error: Exception) -> None:
    """End the call with the status error stands for: a DomainError's own, UNAVAILABLE when the
    database is; anything else is raised again (a bug: INTERNAL, with the traceback logged)."""
    if isinstance(error, DomainError):
        await context.abort(status_of(error), str(error))
    if not is_unavailable(error):
        raise error
    log.warning("grpc.database_unavailable", extra={"error": repr(error)})
    detail = str(error) if isinstance(error, ReplicaUnavailable) else "the service's database is unavailable"
    await context.abort(grpc.StatusCode.UNAVAILABLE, f"{detail}; retry shortly")


@dataclass(frozen=True)
class GrpcService:
    """A servicer to mount: its full proto name, the generated add_*_to_server call, and who may
    call each of its methods (by full method name, "/package.Service/Method")."""

    name: str
    register: Callable[[grpc.aio.Server], None]
    rules: Mapping[str, Rule]

    @classmethod
    def of(
        cls,
        servicer: object,
        descriptor: ServiceDescriptor,
        add_to_server: Callable[[Any, grpc.aio.Server], None],
        access: Mapping[str, Rule],
    ) -> GrpcService:
        """Mount servicer with its generated add_*_to_server, named by its service descriptor.

        access maps every method name of the service to its Rule; a method without one would be
        refused to everybody, so that is an error here rather than a surprise in production.
        """
        methods = {method.name for method in descriptor.methods}
        if set(access) != methods:
            raise ValueError(
                f"{descriptor.full_name}: access rules missing for {sorted(methods - set(access))}, "
                f"unknown methods {sorted(set(access) - methods)}"
            )
        rules = {f"/{descriptor.full_name}/{name}": rule for name, rule in access.items()}
        return cls(descriptor.full_name, lambda server: add_to_server(servicer, server), rules)


@dataclass
class BuiltServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)


# grpc.reflection.v1 is v1alpha under its final name, message for message (the same fields and
# numbers), which newer tools (grpcurl, Postman, grpcui) try first. grpcio-reflection serves only
# v1alpha, so the same servicer answers both names.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(service_names: Sequence[str], server: grpc.aio.Server) -> None:
    servicer = reflection.aio.ReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


def create_server(
    bind: str,
    credentials: grpc.ServerCredentials,
    services: Sequence[GrpcService],
    verifier: TokenVerifier | None = None,
    limiter: RateLimiter | None = None,
    revocations: RevocationList | None = None,
) -> BuiltServer:
    """A server with our services, health (NOT_SERVING until told) and reflection, bound to bind.

    Every call to one of services is authorized by its rules (paysaga.runtime.security.authz); clients' bearer
    tokens are checked with verifier. Health and reflection answer any peer with our certificate.
    """
    rules = {method: rule for service in services for method, rule in service.rules.items()}
    interceptor = AuthorizationInterceptor(
        Authorizer(rules, verifier),
        open_services=(health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1),
        limiter=limiter,
        revocations=revocations,
    )
    server = grpc.aio.server(options=SERVER_OPTIONS, interceptors=[interceptor])
    for service in services:
        service.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service.name for service in services)
    _enable_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1), server)
    try:
        port = server.add_secure_port(bind, credentials)
    except RuntimeError as error:
        raise OSError(f"cannot listen on {bind}: {error}") from error
    if port == 0:
        raise OSError(f"cannot listen on {bind}: address in use or not available")
    return BuiltServer(server, port, health_servicer, names)
