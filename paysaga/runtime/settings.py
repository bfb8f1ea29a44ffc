"""One frozen settings object per service process, read from flags and environment at start.

Every setting has an environment variable (PAYSAGA_...) and a flag; a flag wins over the
environment, which wins over the default. Defaults suit the local cluster started from the
repository root.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paysaga.core.lanes import COMPENSATION, LANES, TIERS
from paysaga.runtime.messaging.windows import ATOMIC_BATCH_MAX, ATOMIC_BATCH_MIN
from paysaga.runtime.security.ratelimit import DEFAULT_LIMITS, Limit, parse_limits
from paysaga.runtime.security.tokens import DEFAULT_ISSUER, PUBLIC_KEYS_FILE
from paysaga.runtime.storage.retention import INBOX_RETENTION_S, OUTBOX_RETENTION_S, Retention

DEFAULT_GRPC_PORTS = {"payments": 50051, "inventory": 50052, "ledger": 50053, "auth": 50054}
DEFAULT_METRICS_PORTS = {"payments": 9151, "inventory": 9152, "ledger": 9153, "auth": 9154}
DEFAULT_NATS_URL = "tls://127.0.0.1:4222"


@dataclass(frozen=True)
class TlsFiles:
    """This process's certificate and key, and the CA certificate it trusts for its peers."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    @classmethod
    def in_directory(cls, certs_dir: Path, name: str) -> TlsFiles:
        return cls(certs_dir / f"{name}.crt", certs_dir / f"{name}.key", certs_dir / "ca.crt")


@dataclass(frozen=True)
class LaneSettings:
    """How a service process shares its work between lanes (paysaga.core.lanes).

    Each lane has its own workers (fetch loops on its durable consumer), more for stricter tiers.
    The compensation lane is always served first. Among the tiers, each gets turns at the database
    in proportion to its weight while they all have work, as far as its workers keep it busy (an
    idle tier lends its turns), so a stricter tier gets more and none starves. max_ack_pending
    caps each lane's events delivered and not yet acknowledged, across every replica of the
    service: a lane's backlog cannot take the whole of NATS's attention."""

    workers: Mapping[str, int] = field(
        default_factory=lambda: {COMPENSATION: 2, "critical": 3, "priority": 2, "standard": 1}
    )
    weights: Mapping[str, int] = field(default_factory=lambda: {"critical": 6, "priority": 3, "standard": 1})
    max_ack_pending: Mapping[str, int] = field(
        default_factory=lambda: {COMPENSATION: 1024, "critical": 512, "priority": 256, "standard": 128}
    )


DEFAULT_LANES = LaneSettings()


def _lane_numbers(text: str, lanes: Sequence[str], defaults: Mapping[str, int]) -> dict[str, int]:
    """'critical=6,standard=1': whole numbers above 0 for some of the lanes, the rest as defaults."""
    values = dict(defaults)
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        lane, _, value = part.partition("=")
        if lane.strip() not in lanes:
            raise argparse.ArgumentTypeError(f"unknown lane {lane!r} (lanes: {', '.join(lanes)})")
        values[lane.strip()] = positive_int(value.strip())
    return values


def lane_workers(text: str) -> dict[str, int]:
    return _lane_numbers(text, LANES, DEFAULT_LANES.workers)


def lane_weights(text: str) -> dict[str, int]:
    return _lane_numbers(text, TIERS, DEFAULT_LANES.weights)


def lane_max_ack_pending(text: str) -> dict[str, int]:
    return _lane_numbers(text, LANES, DEFAULT_LANES.max_ack_pending)


@dataclass(frozen=True)
class ServiceSettings:
    service: str
    grpc_bind: str
    nats_url: str
    tls: TlsFiles
    database_url: str
    log_level: str
    drain_timeout_s: float
    startup_timeout_s: float
    stream_replicas: int
    token_keys_file: Path
    # The issuers (iss) whose tokens are accepted: ops' ("paysaga") and the OAuth server's URL.
    token_issuers: tuple[str, ...]
    # Where /metrics is served (HTTPS, mutual TLS); "" serves none (paysaga.runtime.metrics).
    metrics_bind: str = ""
    # Default per-client rate limits by class of method (paysaga.runtime.security.ratelimit).
    rate_limits: Mapping[str, Limit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    lanes: LaneSettings = DEFAULT_LANES
    # How long handled inbox rows and published outbox rows are kept (paysaga.runtime.storage.retention).
    retention: Retention = field(default_factory=Retention)
    # The values of the service's own Options, parsed, by Option.key.
    options: Mapping[str, Any] = field(default_factory=dict)
    # The relay publishes this many events or more as one atomic batch; 0: never
    # (paysaga.runtime.messaging.batches).
    atomic_batch_min: int = ATOMIC_BATCH_MIN


@dataclass(frozen=True)
class Option:
    """A setting of one service, beside the common ones: a flag, an environment variable, a default
    (text, as the environment gives it) and how to read the text."""

    flag: str
    variable: str
    default: str
    help: str
    parse: Callable[[str], Any]

    @property
    def key(self) -> str:
        """Where its value is in ServiceSettings.options: --saga-timeout-s is saga_timeout_s."""
        return self.flag.removeprefix("--").replace("-", "_")


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {'a whole' if kind is int else 'a'} number, got {text!r}") from None


def positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _atomic_batch_min(text: str) -> int:
    value = int(_number(text, int))
    if not 0 <= value <= ATOMIC_BATCH_MAX:
        raise argparse.ArgumentTypeError(f"must be 0 (never) to {ATOMIC_BATCH_MAX}, got {text}")
    return value


def _replicas(text: str) -> int:
    value = int(_number(text, int))
    if value not in (1, 3, 5):
        raise argparse.ArgumentTypeError(f"must be 1, 3 or 5, got {text}")
    return value


_DEFAULTS = ",".join(f"{name}={limit.rate_per_s:g}/{limit.burst:g}" for name, limit in DEFAULT_LIMITS.items())


def _rate_limits(text: str) -> dict[str, Limit]:
    try:
        return parse_limits(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _pairs(values: Mapping[str, int]) -> str:
    return ",".join(f"{key}={value}" for key, value in values.items())


def load_settings(
    service: str,
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    options: Sequence[Option] = (),
) -> ServiceSettings:
    """The common settings of every service, and the service's own options."""
    env = os.environ if environ is None else environ
    certs_dir = Path(env.get("PAYSAGA_CERTS_DIR", "certs"))
    default_tls = TlsFiles.in_directory(certs_dir, service)
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=f"Run the paysaga {service} service (gRPC over mTLS, events over NATS JetStream).",
    )

    def option(flag: str, variable: str, default: str, help_text: str, **kwargs: Any) -> None:
        parser.add_argument(
            flag,
            default=env.get(variable, default),
            help=f"{help_text} (env {variable}, default %(default)s)",
            **kwargs,
        )

    option(
        "--grpc-bind",
        "PAYSAGA_GRPC_BIND",
        f"127.0.0.1:{DEFAULT_GRPC_PORTS.get(service, 0)}",
        "host:port to serve gRPC on",
    )
    option("--nats-url", "PAYSAGA_NATS_URL", DEFAULT_NATS_URL, "NATS server URL(s), comma-separated, tls:// scheme")
    option(
        "--metrics-bind",
        "PAYSAGA_METRICS_BIND",
        f"127.0.0.1:{DEFAULT_METRICS_PORTS.get(service, 0)}",
        "host:port to serve Prometheus /metrics on (HTTPS, client certificate from our CA required; empty: none)",
    )
    option("--tls-cert", "PAYSAGA_TLS_CERT", str(default_tls.cert_file), "this service's certificate")
    option("--tls-key", "PAYSAGA_TLS_KEY", str(default_tls.key_file), "this service's private key")
    option("--tls-ca", "PAYSAGA_TLS_CA", str(default_tls.ca_file), "CA certificate that peers must chain to")
    option(
        "--token-keys",
        "PAYSAGA_TOKEN_KEYS",
        str(certs_dir / PUBLIC_KEYS_FILE),
        "public keys (JWKS) that client bearer tokens must be signed with",
    )
    option(
        "--token-issuers",
        "PAYSAGA_TOKEN_ISSUERS",
        DEFAULT_ISSUER,
        "comma-separated issuers (iss) a client token may name: ops' and the OAuth server's URL",
    )
    option("--database-url", "PAYSAGA_DATABASE_URL", f"sqlite+aiosqlite:///var/{service}.db", "SQLAlchemy async URL")
    option("--log-level", "PAYSAGA_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", type=str.upper)
    option(
        "--drain-timeout-s",
        "PAYSAGA_DRAIN_TIMEOUT_S",
        "10",
        "grace period for in-flight calls on SIGTERM",
        type=positive_float,
    )
    option(
        "--startup-timeout-s",
        "PAYSAGA_STARTUP_TIMEOUT_S",
        "60",
        "how long to wait for NATS at start",
        type=positive_float,
    )
    option(
        "--stream-replicas",
        "PAYSAGA_STREAM_REPLICAS",
        "1",
        "JetStream replicas of the streams this service owns",
        type=_replicas,
    )
    option(
        "--atomic-batch-min",
        "PAYSAGA_ATOMIC_BATCH_MIN",
        str(ATOMIC_BATCH_MIN),
        "the outbox relay publishes this many events or more as one JetStream atomic batch (one fsync for all); "
        "0: never",
        type=_atomic_batch_min,
    )
    option(
        "--rate-limits",
        "PAYSAGA_RATE_LIMITS",
        "",
        f"per-client limits per process, CLASS=RATE/BURST,...: classes read, write, admin (defaults {_DEFAULTS})",
        type=_rate_limits,
    )
    option(
        "--lane-workers",
        "PAYSAGA_LANE_WORKERS",
        _pairs(DEFAULT_LANES.workers),
        "fetch loops per lane and producer in each process, LANE=COUNT,...",
        type=lane_workers,
    )
    option(
        "--lane-weights",
        "PAYSAGA_LANE_WEIGHTS",
        _pairs(DEFAULT_LANES.weights),
        "each tier's share of the turns at the database while every tier has work, TIER=WEIGHT,... "
        "(the compensation lane is always served first)",
        type=lane_weights,
    )
    option(
        "--lane-max-ack-pending",
        "PAYSAGA_LANE_MAX_ACK_PENDING",
        _pairs(DEFAULT_LANES.max_ack_pending),
        "each lane's events delivered and not yet acknowledged, across replicas, LANE=COUNT,...",
        type=lane_max_ack_pending,
    )
    option(
        "--outbox-retention-s",
        "PAYSAGA_OUTBOX_RETENTION_S",
        f"{OUTBOX_RETENTION_S:g}",
        "published outbox rows are kept this long, then pruned (at least the streams' duplicate window)",
        type=positive_float,
    )
    option(
        "--inbox-retention-s",
        "PAYSAGA_INBOX_RETENTION_S",
        f"{INBOX_RETENTION_S:g}",
        "the ids of handled events are kept this long, then pruned (at least the streams' maximum age)",
        type=positive_float,
    )
    for extra in options:
        option(extra.flag, extra.variable, extra.default, extra.help, type=extra.parse)
    args = parser.parse_args(argv)
    if args.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        parser.error(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {args.log_level}")
    try:
        retention = Retention(float(args.outbox_retention_s), float(args.inbox_retention_s))
    except ValueError as error:
        parser.error(str(error))
    return ServiceSettings(
        service=service,
        grpc_bind=args.grpc_bind,
        nats_url=args.nats_url,
        tls=TlsFiles(Path(args.tls_cert), Path(args.tls_key), Path(args.tls_ca)),
        database_url=args.database_url,
        log_level=args.log_level,
        drain_timeout_s=float(args.drain_timeout_s),
        startup_timeout_s=float(args.startup_timeout_s),
        stream_replicas=int(args.stream_replicas),
        token_keys_file=Path(args.token_keys),
        token_issuers=tuple(name.strip() for name in args.token_issuers.split(",") if name.strip()),
        metrics_bind=args.metrics_bind.strip(),
        rate_limits=_rate_limits(args.rate_limits) if isinstance(args.rate_limits, str) else args.rate_limits,
        lanes=LaneSettings(args.lane_workers, args.lane_weights, args.lane_max_ack_pending),
        retention=retention,
        options={extra.key: getattr(args, extra.key) for extra in options},
        atomic_batch_min=int(args.atomic_batch_min),
    )
