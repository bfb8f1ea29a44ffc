"""A Docker engine for the compose test: the one already running, or one started for the test.

Where no engine answers and we are root on Debian, Debian's docker.io is installed (its service
is not started by the install) and ``dockerd`` is started in the background. dockerd changes the
host: a docker0 bridge, nftables tables and chains, IP forwarding. So before it starts, what it
would change is read; when the test ends, dockerd and every process it started are stopped by
PID and the host is put back as it was. A record on disk lets ``compose-test --cleanup`` finish
that job if the test itself was killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

Say = Callable[[str], None]
STOP_TIMEOUT_S = 30.0
START_TIMEOUT_S = 60.0
# The production file resets and overrides keys of the default one (!reset, !override).
COMPOSE_VERSION_MIN = (2, 24)
# What dockerd changes, as /proc/sys paths: forwarding (and, with it, accept_redirects) and the
# bridge netfilter switches.
SYSCTL_PATTERNS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/*/forwarding",
    "net/ipv4/conf/*/accept_redirects",
    "net/ipv6/conf/*/forwarding",
    "net/bridge/bridge-nf-call-*",
)
# Links and mounts dockerd makes; anything else new on the host is not ours to remove.
DOCKER_LINK_PREFIXES = ("docker0", "br-", "veth")
DOCKER_MOUNT_ROOTS = ("/var/lib/docker", "/run/docker", "/var/run/docker")
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


class EngineError(Exception):
    """No Docker engine can be had, or one could not be started or stopped; the message says why."""


def run(
    command: Iterable[str | Path], *, timeout_s: float, check: bool = True, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; with check, a failure raises EngineError with stderr."""
    arguments = [str(part) for part in command]
    try:
        result = subprocess.run(
            arguments, capture_output=True, text=True, timeout=timeout_s, env=environ, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise EngineError(f"{arguments[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise EngineError(f"{' '.join(arguments)} did not finish within {timeout_s:.0f} s") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise EngineError(f"{' '.join(arguments)} failed (exit {result.returncode}): {detail}")
    return result


def engine_version() -> str | None:
    """The running engine's version, or None when no engine answers."""
    if shutil.which("docker") is None:
        return None
    result = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout_s=30, check=False)
    version = result.stdout.strip()
    return version if result.returncode == 0 and version else None


def compose_version() -> tuple[int, int] | None:
    """The version of the `docker compose` plugin (v2), or None without one."""
    if shutil.which("docker") is None:
        return None
    result = run(["docker", "compose", "version", "--short"], timeout_s=30, check=False)
    found = re.match(r"v?(\d+)\.(\d+)", result.stdout.strip())
    return (int(found[1]), int(found[2])) if result.returncode == 0 and found else None


# -- the host, before and after ---------------------------------------------------------------


@dataclass(frozen=True)
class HostState:
    """What dockerd changes on a host, as read from the host."""

    sysctls: dict[str, str]
    ruleset: str
    links: list[str]
    mounts: list[str]

    def differences(self, other: HostState) -> list[str]:
        """Human-readable differences from self (before) to other (now)."""
        found = [
            f"sysctl {key.replace('/', '.')} is {other.sysctls.get(key)!r}, was {value!r}"
            for key, value in sorted(self.sysctls.items())
            if key in other.sysctls and other.sysctls[key] != value
        ]
        if other.ruleset != self.ruleset:
            found.append("the nftables ruleset differs")
        found += [f"network link {name} is new" for name in sorted(set(other.links) - set(self.links))]
        found += [f"mount {point} is new" for point in sorted(set(other.mounts) - set(self.mounts))]
        return found


def _read_sysctls() -> dict[str, str]:
    root = Path("/proc/sys")
    values = {}
    for pattern in SYSCTL_PATTERNS:
        for path in sorted(root.glob(pattern)):
            with contextlib.suppress(OSError):
                values[str(path.relative_to(root))] = path.read_text().strip()
    return values


def _read_ruleset() -> str:
    if shutil.which("nft") is None:
        return ""
    # Stateless (-s): counters change all the time and are no part of what dockerd configured.
    return run(["nft", "-s", "list", "ruleset"], timeout_s=30).stdout


def _read_links() -> list[str]:
    return sorted(path.name for path in Path("/sys/class/net").iterdir())


def _read_mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 1]


def read_host_state() -> HostState:
    return HostState(_read_sysctls(), _read_ruleset(), _read_links(), _read_mounts())


def restore_host(before: HostState) -> list[str]:
    """Undo what dockerd changed since `before`; return what still differs (empty: all restored)."""
    now = read_host_state()
    for point in reversed(now.mounts):
        if point not in before.mounts and point.startswith(DOCKER_MOUNT_ROOTS):
            run(["umount", "--lazy", point], timeout_s=30, check=False)
    for name in set(now.links) - set(before.links):
        if name.startswith(DOCKER_LINK_PREFIXES):
            run(["ip", "link", "delete", name], timeout_s=30, check=False)
    if now.ruleset != before.ruleset:
        with tempfile.NamedTemporaryFile("w", suffix=".nft") as rules:
            rules.write("flush ruleset\n" + before.ruleset)
            rules.flush()
            run(["nft", "-f", rules.name], timeout_s=30)
    # ip_forward first: turning it off also resets every interface's forwarding and redirects.
    keys = sorted(before.sysctls, key=lambda key: key != "net/ipv4/ip_forward")
    for key in keys:
        path = Path("/proc/sys") / key
        with contextlib.suppress(OSError):
            if path.read_text().strip() != before.sysctls[key]:
                path.write_text(before.sysctls[key] + "\n")
    return before.differences(read_host_state())


# -- installing ---------------------------------------------------------------------------------


def is_debian() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def mirror_in(sources: Iterable[str]) -> str | None:
    """The first Debian archive named in apt source files (one-line or deb822 format)."""
    for text in sources:
        for uri in re.findall(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if uri.rstrip("/").endswith("/debian"):
                return str(uri.rstrip("/"))
    return None


def debian_mirror() -> str:
    """The Debian archive the host's apt uses, else deb.debian.org."""
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    texts = []
    for path in paths:
        with contextlib.suppress(OSError):
            texts.append(path.read_text())
    return mirror_in(texts) or DEFAULT_DEBIAN_MIRROR


def apt_install(packages: Iterable[str], say: Say) -> None:
    """apt-get install, with services kept from starting (a temporary policy-rc.d, removed after)."""
    wanted = list(packages)
    say(f"installing {', '.join(wanted)} from Debian's packages")
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    added_policy = not POLICY_RC_D.exists()
    if added_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# paysaga compose-test: no service starts during its install\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        command = ["apt-get", "install", "-y", "--no-install-recommends", *wanted]
        if run(command, timeout_s=900, check=False, environ=environ).returncode != 0:
            run(["apt-get", "update"], timeout_s=900, environ=environ)
            run(command, timeout_s=900, environ=environ)
    finally:
        if added_policy:
            POLICY_RC_D.unlink(missing_ok=True)


def install_compose_plugin(say: Say) -> None:
    """Compose v2 from Debian trixie's docker-compose package, a Go binary that needs only libc:
    fetched with apt pointed at a scratch trixie source list, so the host's sources stay as they are."""
    say("installing the docker compose v2 plugin (Debian trixie's docker-compose package)")
    with tempfile.TemporaryDirectory(prefix="paysaga-compose-apt-") as scratch:
        root = Path(scratch)
        (root / "lists" / "partial").mkdir(parents=True)
        (root / "cache" / "archives" / "partial").mkdir(parents=True)
        (root / "sources.list").write_text(f"deb {debian_mirror()} trixie main\n")
        options = [
            f"-o=Dir::Etc::SourceList={root / 'sources.list'}",
            "-o=Dir::Etc::SourceParts=/nonexistent",
            f"-o=Dir::State::Lists={root / 'lists'}",
            f"-o=Dir::Cache={root / 'cache'}",
            # The download runs as root into this scratch directory rather than as _apt.
            "-o=APT::Sandbox::User=root",
        ]
        run(["apt-get", *options, "update"], timeout_s=600)
        subprocess.run(
            ["apt-get", *options, "download", "docker-compose"],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=600,
        )
        package = next(root.glob("docker-compose_*.deb"), None)
        if package is None:
            raise EngineError("apt-get download docker-compose from trixie gave no package")
        run(["dpkg", "-i", package], timeout_s=300)


def ensure_compose(say: Say) -> None:
    version = compose_version()
    if version is None and os.geteuid() == 0 and is_debian():
        install_compose_plugin(say)
        version = compose_version()
    if version is None:
        raise EngineError(
            "the docker compose v2 plugin is missing ('docker compose version' fails); install it "
            "(Debian trixie and later: apt-get install docker-compose; elsewhere: docker-compose-plugin)"
        )
    if version < COMPOSE_VERSION_MIN:
        raise EngineError(
            f"docker compose {version[0]}.{version[1]} is too old: the production file needs "
            f"{COMPOSE_VERSION_MIN[0]}.{COMPOSE_VERSION_MIN[1]} or newer"
        )


# -- a dockerd of our own ----------------------------------------------------------------------


@dataclass(frozen=True)
class StartedEngine:
    """A dockerd this program started: its PID (and start time, so a reused PID is never taken for
    it) and the host as it was before."""

    pid: int
    start_ticks: int
    before: HostState

    def save(self, record: Path) -> None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, record: Path) -> StartedEngine:
        data = json.loads(record.read_text())
        return cls(data["pid"], data["start_ticks"], HostState(**data["before"]))


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent PID, start time in clock ticks since boot) of a process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, ticks: int) -> bool:
    """The process with this PID and start time still runs (a zombie has ended)."""
    found = _stat(pid)
    return found is not None and found[2] == ticks and found[0] != "Z"


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every process below pid, as (pid, start ticks)."""
    table = {int(entry.name): _stat(int(entry.name)) for entry in Path("/proc").iterdir() if entry.name.isdigit()}
    found: list[tuple[int, int]] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, stat in table.items():
            if stat is not None and stat[1] == current:
                found.append((child, stat[2]))
                frontier.append(child)
    return found


def start_engine(record: Path, log: Path, say: Say) -> StartedEngine:
    """Install what is missing, start dockerd in the background and wait until it answers."""
    if os.geteuid() != 0 or not is_debian():
        raise EngineError(
            "no Docker engine is running ('docker info' fails). Start one, or run this as root on "
            "Debian, where it installs Debian's docker.io and starts one for the test only"
        )
    missing = [
        package for package, program in (("docker.io", "dockerd"), ("nftables", "nft")) if not shutil.which(program)
    ]
    if missing:
        apt_install(missing, say)
    if "nf_tables" not in run(["iptables", "--version"], timeout_s=30).stdout:
        raise EngineError(
            "iptables uses the legacy backend here, and only nftables rules can be put back afterwards: "
            "start a Docker engine yourself"
        )
    ensure_compose(say)
    if record.exists():
        # A run that was killed before it could clean up: put the host back first.
        problems = stop_engine(StartedEngine.load(record), record)
        if problems:
            raise EngineError(f"an earlier dockerd of ours left the host changed: {'; '.join(problems)}")
    before = read_host_state()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        process = subprocess.Popen(
            ["dockerd"], stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    stat = _stat(process.pid)
    engine = StartedEngine(process.pid, stat[2] if stat else 0, before)
    engine.save(record)
    say(f"started dockerd (PID {process.pid}, log {log})")
    deadline = time.monotonic() + START_TIMEOUT_S
    while engine_version() is None:
        if process.poll() is not None or time.monotonic() > deadline:
            problems = stop_engine(engine, record)
            tail = log.read_text(errors="replace")[-2000:]
            raise EngineError(f"dockerd did not come up within {START_TIMEOUT_S:.0f} s:\n{tail}\n{problems}")
        time.sleep(0.5)
    return engine


def _stop(processes: list[tuple[int, int]], timeout_s: float) -> list[tuple[int, int]]:
    """SIGTERM each, wait, then SIGKILL what is left; return what would not die."""
    for signal_number, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        for pid, ticks in processes:
            if _alive(pid, ticks):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal_number)
        deadline = time.monotonic() + wait_s
        while any(_alive(pid, ticks) for pid, ticks in processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid, _ in processes:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped here when it is our own child (dockerd)
    return [(pid, ticks) for pid, ticks in processes if _alive(pid, ticks)]


def stop_engine(engine: StartedEngine, record: Path) -> list[str]:
    """Stop dockerd and everything it started, by PID, then put the host back; return what could
    not be restored (empty: the host is as it was)."""
    children = descendants(engine.pid) if _alive(engine.pid, engine.start_ticks) else []
    left = _stop([(engine.pid, engine.start_ticks)], STOP_TIMEOUT_S)
    left += _stop(children, 10.0)
    problems = [f"process {pid} started by dockerd is still running" for pid, _ in left]
    problems += restore_host(engine.before)
    if not problems:
        record.unlink(missing_ok=True)
    return problems
