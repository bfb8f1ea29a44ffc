"""One docker-compose project of paysaga, driven through the `docker compose` command line.

compose-test runs each cluster as a project of its own, under a name of its own
(paysaga-test-<random>), so it never touches a cluster someone runs under the files' names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paysaga.ops.compose.engine import EngineError, run

REPO = Path(__file__).resolve().parents[3]
BUILD_TIMEOUT_S = 1800.0
UP_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 180.0
# The user's own compose settings must not redirect what the test builds, starts and removes.
IGNORED_ENVIRONMENT = ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES", "COMPOSE_PATH_SEPARATOR")


class ComposeError(EngineError):
    """A docker or docker compose command failed; the message carries its output."""


@dataclass(frozen=True)
class Topology:
    """What differs between the default cluster and the production profile."""

    label: str
    files: tuple[str, ...]
    # The service whose port is published: payments itself, or the proxy in front of its replicas.
    entry: str
    # The service publishing the authorization server's HTTPS port: auth itself, or the same proxy.
    oauth_entry: str
    replicas: int
    # Whether a "reconcile" service runs the nightly reconciliation.
    reconciles: bool = False
    # The nats-servers: one, or the production profile's cluster of three.
    nats_nodes: tuple[str, ...] = ("nats",)
    # Whether PostgreSQL has a synchronous standby, "postgres-standby" (docker-compose.standby.yml).
    standby: bool = False


DEFAULT = Topology("default", ("docker-compose.yml",), entry="payments", oauth_entry="auth", replicas=1)
PRODUCTION = Topology(
    "production",
    ("docker-compose.yml", "docker-compose.production.yml"),
    entry="edge",
    oauth_entry="edge",
    replicas=2,
    reconciles=True,
    nats_nodes=("nats", "nats-2", "nats-3"),
)
# The production profile with a synchronous PostgreSQL standby; its files name every service any
# topology has, so removing a project by them removes all of it.
STANDBY = dataclasses.replace(
    PRODUCTION,
    label="standby",
    files=(*PRODUCTION.files, "docker-compose.standby.yml"),
    standby=True,
)
# The purchase saga's services (the authorization server, "auth", takes no part in a purchase).
SERVICES = ("payments", "inventory", "ledger")


def _run(
    arguments: Sequence[str],
    *,
    timeout_s: float,
    input_text: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run(["docker", *arguments], timeout_s=timeout_s, check=False, environ=environ, input_text=input_text)


def _stdout(arguments: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    if result.returncode != 0:
        detail = (result.stderr + result.stdout).strip()[-3000:]
        raise ComposeError(f"docker {shlex.join(arguments)} failed (exit {result.returncode}):\n{detail}")
    return result.stdout


def docker(*arguments: str, timeout_s: float = CALL_TIMEOUT_S) -> str:
    """Run a docker command; its stdout, or ComposeError with its output."""
    return _stdout(arguments, _run(arguments, timeout_s=timeout_s))


@dataclass
class ComposeProject:
    topology: Topology
    # PAYSAGA_BASE_IMAGE, PAYSAGA_PAYMENTS_PORT, PAYSAGA_OAUTH_PORT: what the compose files read
    # from the environment.
    environment: Mapping[str, str]
    log: Path
    name: str = field(default_factory=lambda: f"paysaga-test-{uuid.uuid4().hex[:8]}")

    def command(self, *arguments: str) -> list[str]:
        files = [option for name in self.topology.files for option in ("--file", str(REPO / name))]
        return ["compose", "--project-name", self.name, "--project-directory", str(REPO), *files, *arguments]

    def call(self, *arguments: str, timeout_s: float = CALL_TIMEOUT_S, input_text: str | None = None) -> str:
        """Run docker compose on this project; its stdout. The progress it prints goes to the log."""
        return _stdout(self.command(*arguments), self.attempt(*arguments, timeout_s=timeout_s, input_text=input_text))

    def attempt(
        self, *arguments: str, timeout_s: float = CALL_TIMEOUT_S, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run docker compose on this project, whatever its exit status; stderr goes to the log too."""
        environ = {key: value for key, value in os.environ.items() if key not in IGNORED_ENVIRONMENT}
        command = self.command(*arguments)
        result = _run(command, timeout_s=timeout_s, input_text=input_text, environ={**environ, **self.environment})
        with self.log.open("a") as log:
            log.write(f"$ docker {shlex.join(command)}\n{result.stderr}")
        return result

    def build(self) -> None:
        self.call("build", timeout_s=BUILD_TIMEOUT_S)

    def up(self) -> None:
        """Start everything and wait until every container is healthy (or the one-shot job is done)."""
        self.call("up", "--detach", "--wait", "--wait-timeout", f"{UP_TIMEOUT_S:.0f}", timeout_s=UP_TIMEOUT_S + 60)

    def down(self) -> None:
        """Remove the containers, the networks and the volumes."""
        self.call("--profile", "tools", "down", "--volumes", "--remove-orphans", "--timeout", "30", timeout_s=300)

    def one_off(
        self,
        service: str,
        *arguments: str,
        entrypoint: str | None = None,
        input_text: str | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> str:
        """A one-off container of service (not its dependencies), removed afterwards; its stdout."""
        options = ["--rm", "-T", "--no-deps", *(["--entrypoint", entrypoint] if entrypoint else [])]
        options += [f"--env={name}={value}" for name, value in (environment or {}).items()]
        return self.call("run", *options, service, *arguments, input_text=input_text)

    def exec(self, service: str, *arguments: str) -> str:
        """Run a command in the running container of service (its first replica), with that
        container's environment, as `docker compose exec` does for an operator; its stdout."""
        return self.call("exec", "-T", service, *arguments)

    def ops(self, commands: Sequence[Sequence[str]]) -> list[Any]:
        """Run `paysaga --json ...` commands in one ops container, in order; one JSON value each."""
        script = "set -e\n" + "".join(f"paysaga --json {shlex.join(command)}\n" for command in commands)
        output = self.one_off("ops", "-c", script, entrypoint="sh")
        try:
            return [json.loads(line) for line in output.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ComposeError(f"the ops client printed something other than JSON:\n{output[-2000:]}") from None

    def inspect(self, service: str | None = None) -> list[dict[str, Any]]:
        """`docker inspect` of the project's containers (of one service), first replica first."""
        ids = self.call("ps", "--all", "--quiet", *([service] if service else [])).split()
        if not ids:
            return []
        found: list[dict[str, Any]] = json.loads(docker("inspect", *ids))
        return sorted(found, key=lambda item: int(item["Config"]["Labels"]["com.docker.compose.container-number"]))

    def container_logs(self, container: str) -> str:
        """Everything one container has logged, stdout and stderr (the services log to stderr)."""
        arguments = ("logs", container)
        result = _run(arguments, timeout_s=CALL_TIMEOUT_S)
        return _stdout(arguments, result) + result.stderr

    def signal(self, service: str, signal: str) -> None:
        """Send signal to every container of service, as an operator does with `docker compose kill -s`."""
        self.call("kill", "--signal", signal, service)

    def kill(self, container: str) -> None:
        """SIGKILL one container; its restart policy leaves it down (docker treats a kill as meant)."""
        docker("kill", "--signal", "KILL", container)

    def published_ports(self) -> list[tuple[str, str, str]]:
        """Every port any container of the project publishes on the host, as (service, address, port)."""
        found = []
        for item in self.inspect():
            service = item["Config"]["Labels"]["com.docker.compose.service"]
            for bindings in (item["NetworkSettings"]["Ports"] or {}).values():
                found += [(service, binding["HostIp"], binding["HostPort"]) for binding in bindings or []]
        return found

    def diagnostics(self) -> str:
        """What someone needs to see when a check failed: every container's state and its last logs."""
        parts = []
        for arguments in (("ps", "--all"), ("logs", "--no-color", "--tail", "40")):
            try:
                parts.append(self.call(*arguments))
            except ComposeError as error:
                parts.append(str(error))
        return "\n".join(parts)
