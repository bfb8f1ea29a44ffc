"""The chaos suite's network: Linux network namespaces it creates and removes, nothing else.

A hub namespace holds a bridge; every member (a process of the cluster, and the client that drives
the load) gets a namespace of its own, joined to the bridge by a veth pair created inside the
namespaces (the host's own network is never touched). Cutting a member off is setting its end of
the pair down: its connections stall as they would behind a failed switch port, with no reset,
until it is set up again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

COMMAND_TIMEOUT_S = 10
BRIDGE = "br0"
MEMBER_LINK = "eth0"


class NetworkError(Exception):
    """An ip command failed, or the machine cannot make namespaces (not root, no ip)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def check_available() -> None:
    if shutil.which("ip") is None:
        raise NetworkError("the ip command (Debian package iproute2) is not installed")
    if os.geteuid() != 0:
        raise NetworkError("network namespaces need root")


@dataclass
class Network:
    """prefix names everything this run creates (unique per run); subnet is the first three octets
    of the /24 its members get addresses in, inside its namespaces only."""

    prefix: str
    subnet: str
    members: dict[str, str] = field(default_factory=dict)  # member -> its address

    @property
    def hub(self) -> str:
        return f"{self.prefix}-hub"

    def namespace(self, member: str) -> str:
        return f"{self.prefix}-{member}"

    def create(self) -> None:
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.hub, "link", "set", BRIDGE, "up")

    def add(self, member: str) -> str:
        """A namespace for member, on the bridge; returns its address."""
        address = f"{self.subnet}.{len(self.members) + 2}"
        namespace, port = self.namespace(member), f"p{len(self.members) + 2}"
        _ip("netns", "add", namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "link", "add", MEMBER_LINK, "type", "veth", "peer", "name", port, "netns", self.hub)
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", MEMBER_LINK)
        _ip("-n", namespace, "link", "set", MEMBER_LINK, "up")
        _ip("-n", self.hub, "link", "set", port, "master", BRIDGE)
        _ip("-n", self.hub, "link", "set", port, "up")
        self.members[member] = address
        return address

    def run_in(self, member: str) -> list[str]:
        """The prefix that runs a command inside member's namespace (the process keeps its PID)."""
        return ["ip", "netns", "exec", self.namespace(member)]

    def cut(self, member: str) -> None:
        _ip("-n", self.namespace(member), "link", "set", MEMBER_LINK, "down")

    def heal(self, member: str) -> None:
        _ip("-n", self.namespace(member), "link", "set", MEMBER_LINK, "up")

    def remove(self) -> list[str]:
        """Delete every namespace of this run (their links go with them); returns what failed."""
        failed = []
        for namespace in [*(self.namespace(member) for member in self.members), self.hub]:
            try:
                _ip("netns", "del", namespace)
            except NetworkError as error:
                failed.append(str(error))
        return failed

    def leftovers(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        return [line.split()[0] for line in listed.stdout.splitlines() if line.startswith(f"{self.prefix}-")]
