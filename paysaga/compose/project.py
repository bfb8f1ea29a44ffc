"""One docker-compose project of paysaga, driven through the `docker compose` command line."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 1800.0
UP_TIMEOUT_S = 300
CALL_TIMEOUT_S = 180.0


class ComposeError(Exception):
    """A docker compose command failed; the message carries its output."""


@dataclass(frozen=True)
class Topology:
    """What differs between the default cluster and the production profile."""

    name: str
    files: tuple[str, ...]
    # The service whose port is published: payments itself, or the proxy in front of its replicas.
    entry: str
    replicas: int


DEFAULT = Topology("paysaga", ("docker-compose.yml",), entry="payments", replicas=1)
PRODUCTION = Topology(
    "paysaga-production", ("docker-compose.yml", "docker-compose.production.yml"), entry="edge", replicas=2
)
SERVICES = ("payments", "inventory", "ledger")


@dataclass
class ComposeProject:
    topology: Topology
    # PAYSAGA_BASE_IMAGE, PAYSAGA_PAYMENTS_PORT: what the compose files read from the environment.
    environment: Mapping[str, str]
    log: Path
    _environ: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self._environ = {**os.environ, **self.environment}

    def command(self, *arguments: str) -> list[str]:
        files = [option for name in self.topology.files for option in ("--file", str(REPO / name))]
        return ["docker", "compose", "--project-directory", str(REPO), *files, *arguments]

    def call(
        self, *arguments: str, timeout_s: float = CALL_TIMEOUT_S, input_text: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run docker compose; its progress output (stderr) goes to the log, stdout is returned."""
        command = self.command(*arguments)
        try:
            result = subprocess.run(
                command,
                input=input_text,
                stdin=None if input_text is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env=self._environ,
                cwd=REPO,
            )
        except subprocess.TimeoutExpired:
            raise ComposeError(f"{shlex.join(arguments)} did not finish within {timeout_s:.0f} s") from None
        with self.log.open("a") as log:
            log.write(f"$ {shlex.join(command)}\n{result.stderr}")
        if check and result.returncode != 0:
            detail = (result.stderr + result.stdout).strip()[-3000:]
            raise ComposeError(f"docker compose {shlex.join(arguments)} failed (exit {result.returncode}):\n{detail}")
        return result

    def build(self) -> None:
        self.call("build", timeout_s=BUILD_TIMEOUT_S)

    def up(self) -> None:
        """Start everything and wait until every container is healthy (or the one-shot job is done)."""
        self.call("up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), timeout_s=UP_TIMEOUT_S + 60)

    def down(self) -> None:
        """Remove the containers, the networks and the volumes."""
        self.call("--profile", "tools", "down", "--volumes", "--remove-orphans", "--timeout", "30", timeout_s=300)

    def one_off(
        self, service: str, *arguments: str, entrypoint: str | None = None, input_text: str | None = None
    ) -> str:
        """A one-off container of service (not its dependencies), removed afterwards; its stdout."""
        options = ["--rm", "-T", "--no-deps", *(["--entrypoint", entrypoint] if entrypoint else [])]
        return self.call("run", *options, service, *arguments, input_text=input_text).stdout

    def ops(self, commands: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        """Run `paysaga --json ...` commands in one ops container, in order; one JSON object each."""
        script = "set -e\n" + "".join(f"paysaga --json {shlex.join(command)}\n" for command in commands)
        output = self.one_off("ops", "-c", script, entrypoint="sh")
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def containers(self, service: str) -> list[str]:
        """The ids of the service's running containers, first replica first."""
        output = self.call("ps", "--quiet", service).stdout.split()
        if not output:
            return []
        inspected = json.loads(
            subprocess.run(
                ["docker", "inspect", *output], capture_output=True, text=True, timeout=60, check=True
            ).stdout
        )
        ordered = sorted(
            inspected, key=lambda item: int(item["Config"]["Labels"]["com.docker.compose.container-number"])
        )
        return [str(item["Id"]) for item in ordered]

    def kill(self, container: str) -> None:
        """SIGKILL one container; its restart policy leaves it down (docker treats a kill as meant)."""
        subprocess.run(["docker", "kill", "--signal", "KILL", container], capture_output=True, timeout=60, check=True)

    def published_ports(self) -> list[tuple[str, str, str]]:
        """Every port any container of the project publishes on the host, as (service, address, port)."""
        ids = self.call("ps", "--all", "--quiet").stdout.split()
        if not ids:
            return []
        inspected = json.loads(
            subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=60, check=True).stdout
        )
        found = []
        for item in inspected:
            service = item["Config"]["Labels"]["com.docker.compose.service"]
            for bindings in (item["NetworkSettings"]["Ports"] or {}).values():
                found += [(service, binding["HostIp"], binding["HostPort"]) for binding in bindings or []]
        return found

    def diagnostics(self) -> str:
        """What someone needs to see when a check failed: every container's state and its last logs."""
        state = self.call("ps", "--all", check=False).stdout
        logs = self.call("logs", "--no-color", "--tail", "40", check=False).stdout
        return f"{state}\n{logs}"
