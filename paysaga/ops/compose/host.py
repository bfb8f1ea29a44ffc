"""What dockerd changes on a host, read before it starts and put back after it stopped.

dockerd adds a docker0 bridge and one bridge per network, chains and rules in the nftables tables
that iptables-nft uses (ip/ip6 nat and filter, FORWARD's policy set to drop), turns on IP
forwarding (which also turns off accepting redirects), may load br_netfilter, and mounts under
its own directories. Only those are compared and restored: whatever else changes on the host
meanwhile is not ours to judge or undo.
"""

from __future__ import annotations

import contextlib
import functools
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

SYSCTL_PATTERNS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/*/forwarding",
    "net/ipv4/conf/*/accept_redirects",
    "net/ipv6/conf/*/forwarding",
    "net/bridge/bridge-nf-call-*",
)
DOCKER_TABLES = ("ip nat", "ip filter", "ip6 nat", "ip6 filter")
DOCKER_LINK_PREFIXES = ("docker0", "br-", "veth")
DOCKER_MOUNT_ROOTS = ("/var/lib/docker", "/run/docker", "/var/run/docker")
DOCKER_MODULES = ("br_netfilter",)
COMMAND_TIMEOUT_S = 30.0
# How nft lists an iptables match or target it has no words for: "xt match ..." or a comment.
UNTRANSLATED_RULE = re.compile(r"\bxt (?:match|target)\b|\bxt_\w+|^\s+#", re.MULTILINE)


@dataclass(frozen=True)
class HostState:
    boot_id: str
    sysctls: dict[str, str]
    # nftables tables dockerd writes to, as `nft -s list ruleset` prints them.
    tables: dict[str, str]
    links: list[str]
    mounts: list[str]
    modules: list[str] = field(default_factory=list)

    def differences(self, now: HostState) -> list[str]:
        """What dockerd changed that is still changed, from self (before) to now."""
        found = [
            f"sysctl {key.replace('/', '.')} is {now.sysctls.get(key)!r}, was {value!r}"
            for key, value in sorted(self.sysctls.items())
            if key in now.sysctls and now.sysctls[key] != value
        ]
        found += [
            f"nftables table {name} differs" for name in DOCKER_TABLES if self.tables.get(name) != now.tables.get(name)
        ]
        found += [
            f"network link {name} is new"
            for name in sorted(set(now.links) - set(self.links))
            if name.startswith(DOCKER_LINK_PREFIXES)
        ]
        found += [
            f"mount {point} is new"
            for point in sorted(set(now.mounts) - set(self.mounts))
            if point.startswith(DOCKER_MOUNT_ROOTS)
        ]
        found += [
            f"kernel module {name} is loaded"
            for name in DOCKER_MODULES
            if name in now.modules and name not in self.modules
        ]
        return found

    def unrestorable_tables(self) -> list[str]:
        """Tables with rules nft can only print as comments (iptables extensions it cannot express):
        writing them back would drop those matches, so we must not promise to."""
        return [name for name, block in self.tables.items() if UNTRANSLATED_RULE.search(block)]


def _command(arguments: list[str], text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        arguments, input=text, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, start_new_session=True
    )


def parse_tables(ruleset: str) -> dict[str, str]:
    """The top-level `table FAMILY NAME { ... }` blocks of an nft listing, by "FAMILY NAME"."""
    tables: dict[str, str] = {}
    current: list[str] = []
    for line in ruleset.splitlines():
        if line.startswith("table "):
            current = [line]
        elif current:
            current.append(line)
            if line == "}":
                name = " ".join(current[0].split()[1:3])
                tables[name] = "\n".join(current) + "\n"
                current = []
    return tables


def _read_sysctls() -> dict[str, str]:
    root = Path("/proc/sys")
    values = {}
    for pattern in SYSCTL_PATTERNS:
        for path in sorted(root.glob(pattern)):
            with contextlib.suppress(OSError):
                values[str(path.relative_to(root))] = path.read_text().strip()
    return values


def _read_tables() -> dict[str, str]:
    # Stateless (-s): counters change all the time and are no part of what dockerd configured.
    listed = _command(["nft", "-s", "list", "ruleset"])
    if listed.returncode != 0:
        raise OSError(f"nft list ruleset failed: {listed.stderr.strip()}")
    return {name: block for name, block in parse_tables(listed.stdout).items() if name in DOCKER_TABLES}


def _read_modules() -> list[str]:
    modules = Path("/proc/modules")
    return sorted(line.split()[0] for line in modules.read_text().splitlines()) if modules.exists() else []


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def read_host_state() -> HostState:
    return HostState(
        boot_id(),
        _read_sysctls(),
        _read_tables(),
        sorted(path.name for path in Path("/sys/class/net").iterdir()),
        [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 1],
        _read_modules(),
    )


def _step(problems: list[str], what: str, action: Callable[[], subprocess.CompletedProcess[str] | None]) -> None:
    """One restore step; a failure is recorded and the next step still runs."""
    try:
        result = action()
    except (OSError, subprocess.SubprocessError) as error:
        problems.append(f"{what}: {error}")
        return
    if result is not None and result.returncode != 0:
        problems.append(f"{what}: {(result.stderr or result.stdout).strip()}")


def _write_sysctl(key: str, value: str) -> None:
    path = Path("/proc/sys") / key
    if path.exists() and path.read_text().strip() != value:
        path.write_text(value + "\n")


def _restore_tables(before: HostState, now: HostState) -> subprocess.CompletedProcess[str] | None:
    script = ""
    for name in DOCKER_TABLES:
        if now.tables.get(name) == before.tables.get(name):
            continue
        if name in now.tables:
            script += f"delete table {name}\n"
        script += before.tables.get(name, "")
    if not script:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as rules:
        rules.write(script)
        rules.flush()
        return _command(["nft", "-f", rules.name])


def restore_host(before: HostState, docker_bridges: Iterable[str]) -> list[str]:
    """Undo what dockerd changed since `before`: its mounts, its bridges (docker0 and those of the
    networks it had), its nftables tables, forwarding, br_netfilter. Every step runs even if an
    earlier one failed; returns what still differs (empty: the host is as it was)."""
    problems: list[str] = []
    now = read_host_state()
    for point in reversed(now.mounts):
        if point not in before.mounts and point.startswith(DOCKER_MOUNT_ROOTS):
            _step(problems, f"unmount {point}", functools.partial(_command, ["umount", "--lazy", point]))
    for name in sorted(set(now.links) - set(before.links)):
        if name == "docker0" or name in docker_bridges:
            _step(problems, f"delete link {name}", functools.partial(_command, ["ip", "link", "delete", name]))
    _step(problems, "restore nftables", lambda: _restore_tables(before, now))
    for module in DOCKER_MODULES:
        if module in now.modules and module not in before.modules:
            _step(problems, f"unload {module}", functools.partial(_command, ["modprobe", "-r", module]))
    # ip_forward first: turning it off also resets every interface's forwarding and redirects.
    for key in sorted(before.sysctls, key=lambda key: key != "net/ipv4/ip_forward"):
        _step(problems, f"sysctl {key}", functools.partial(_write_sysctl, key, before.sysctls[key]))
    try:
        return problems + before.differences(read_host_state())
    except OSError as error:
        return [*problems, f"reading the host state again: {error}"]
