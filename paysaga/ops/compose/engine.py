"""A Docker engine for the compose test: the one already running, or one started for the test.

Where no engine answers and we are root on Debian, Debian's docker.io is installed (its service
is not started by the install) and ``dockerd`` is started in the background. Before it starts,
what it would change on the host is read (paysaga.ops.compose.host); when we are done, the
containers on it are stopped, then dockerd and every process it started, by PID, and the host is
put back. A record on disk lets ``compose-engine --stop`` finish that job if the run was killed.
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from paysaga.ops.compose.host import HostState, boot_id, read_host_state, restore_host
from paysaga.runtime.files import write_file

Say = Callable[[str], None]
STOP_TIMEOUT_S = 45.0
START_TIMEOUT_S = 60.0
# dockerd gives each container this long to stop when it shuts down, well within STOP_TIMEOUT_S.
SHUTDOWN_TIMEOUT_S = 15
# The production file resets and overrides keys of the default one: !override came in 2.24.4.
COMPOSE_VERSION_MIN = (2, 24, 4)
DEBIAN_MIRROR_DEFAULT = "http://deb.debian.org/debian"
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# What a dockerd runs: any of these started after our dockerd is ours to stop.
DOCKER_PROGRAMS = ("dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "docker-proxy", "runc")


class EngineError(Exception):
    """No Docker engine can be had, or one could not be started or stopped; the message says why."""


def run(
    command: Iterable[str | Path],
    *,
    timeout_s: float,
    check: bool = True,
    environ: Mapping[str, str] | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; with check, a failure raises EngineError with stderr.
    It runs in a session of its own: a Ctrl-C at the terminal reaches us, and we decide what stops."""
    arguments = [str(part) for part in command]
    try:
        result = subprocess.run(
            arguments,
            input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=None if environ is None else dict(environ),
            start_new_session=True,
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


def compose_version() -> tuple[int, int, int] | None:
    """The version of the `docker compose` plugin (v2), or None without one."""
    if shutil.which("docker") is None:
        return None
    result = run(["docker", "compose", "version", "--short"], timeout_s=30, check=False)
    found = re.match(r"v?(\d+)\.(\d+)\.(\d+)", result.stdout.strip())
    return (int(found[1]), int(found[2]), int(found[3])) if result.returncode == 0 and found else None


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
    return mirror_in(texts) or DEBIAN_MIRROR_DEFAULT


def apt_install(packages: Iterable[str], say: Say) -> None:
    """apt-get install, with services kept from starting (a temporary policy-rc.d, removed after)."""
    wanted = list(packages)
    say(f"installing {', '.join(wanted)} from Debian's packages")
    environ = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    added_policy = not POLICY_RC_D.exists()
    if added_policy:
        POLICY_RC_D.write_text("#!/bin/sh\n# paysaga: no service starts during this install\nexit 101\n")
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
        downloaded = subprocess.run(
            ["apt-get", *options, "download", "docker-compose"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            start_new_session=True,
        )
        package = next(root.glob("docker-compose_*.deb"), None)
        if downloaded.returncode != 0 or package is None:
            raise EngineError(f"apt-get download docker-compose (trixie) failed: {downloaded.stderr.strip()}")
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
        wanted = ".".join(map(str, COMPOSE_VERSION_MIN))
        raise EngineError(f"docker compose {'.'.join(map(str, version))} is too old: the compose files need {wanted}")


# -- a dockerd of our own ----------------------------------------------------------------------


@dataclass(frozen=True)
class StartedEngine:
    """A dockerd this program started: its PID and start time (so a reused PID is never taken for
    it), and the host as it was before, in this boot."""

    pid: int
    start_ticks: int
    before: HostState

    def save(self, record: Path) -> None:
        record.parent.mkdir(parents=True, exist_ok=True)
        write_file(record, json.dumps(asdict(self), indent=2).encode(), 0o600)

    @classmethod
    def load(cls, record: Path) -> StartedEngine | None:
        """The recorded engine, or None when the record is from an earlier boot (nothing of it is left)."""
        data = json.loads(record.read_text())
        before = HostState(**data["before"])
        return cls(data["pid"], data["start_ticks"], before) if before.boot_id == boot_id() else None


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


def _processes() -> dict[int, tuple[str, int, int]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    return table


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every process below pid, as (pid, start ticks)."""
    table = _processes()
    found: list[tuple[int, int]] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child, stat in table.items():
            if stat[1] == current:
                found.append((child, stat[2]))
                frontier.append(child)
    return found


def docker_programs_since(ticks: int) -> list[tuple[int, int]]:
    """Docker's programs started since `ticks`: what our dockerd started, including what left its
    tree on purpose (containerd-shim re-parents itself to init)."""
    found = []
    for pid, stat in _processes().items():
        with contextlib.suppress(OSError):
            if stat[2] >= ticks and Path(f"/proc/{pid}/exe").readlink().name in DOCKER_PROGRAMS:
                found.append((pid, stat[2]))
    return found


def start_engine(record: Path, log: Path, say: Say) -> StartedEngine:
    """Install what is missing, start dockerd in the background and wait until it answers."""
    if os.geteuid() != 0 or not is_debian():
        raise EngineError(
            "no Docker engine is running ('docker info' fails). Start one, or run this as root on "
            "Debian, where it installs Debian's docker.io and starts one for the test only"
        )
    wanted = (("docker.io", "dockerd"), ("nftables", "nft"))
    missing = [package for package, program in wanted if not shutil.which(program)]
    if missing:
        apt_install(missing, say)
    if "nf_tables" not in run(["iptables", "--version"], timeout_s=30).stdout:
        raise EngineError(
            "iptables uses the legacy backend here, and only nftables rules can be put back afterwards: "
            "start a Docker engine yourself"
        )
    ensure_compose(say)
    if record.exists():
        problems = stop_recorded(record)  # a run killed before it could clean up: undo that first
        if problems:
            raise EngineError(f"an earlier dockerd of ours left the host changed: {'; '.join(problems)}")
    before = read_host_state()
    if before.unrestorable_tables():
        raise EngineError(
            f"nftables tables {', '.join(before.unrestorable_tables())} hold rules that could not be written "
            "back after dockerd changed them: start a Docker engine yourself"
        )
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        process = subprocess.Popen(
            ["dockerd", f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stat = _stat(process.pid)
    if stat is None:
        raise EngineError(f"dockerd exited at once; see {log}")
    engine = StartedEngine(process.pid, stat[2], before)
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


def _bridges() -> list[str]:
    """The host bridges of the engine's networks (br-<id>), which outlive the engine."""
    listed = run(
        ["docker", "network", "ls", "--quiet", "--no-trunc", "--filter", "driver=bridge"], timeout_s=60, check=False
    )
    return [f"br-{network[:12]}" for network in listed.stdout.split()]


def stop_engine(engine: StartedEngine, record: Path) -> list[str]:
    """Stop the containers on it, then dockerd and everything it started, by PID; then put the
    host back. Returns what could not be stopped or restored (empty: the host is as it was)."""
    bridges: list[str] = []
    if _alive(engine.pid, engine.start_ticks):
        running = run(["docker", "ps", "--quiet"], timeout_s=60, check=False).stdout.split()
        if running:
            run(["docker", "stop", "--time", "10", *running], timeout_s=120, check=False)
        bridges = _bridges()
        children = descendants(engine.pid)
        _stop([(engine.pid, engine.start_ticks)], STOP_TIMEOUT_S)
        _stop(children, 10.0)
    left = _stop(docker_programs_since(engine.start_ticks), 10.0)
    problems = [f"process {pid} started by our dockerd would not stop" for pid, _ in left]
    if _alive(engine.pid, engine.start_ticks):
        problems.append(f"dockerd (PID {engine.pid}) would not stop")
    problems += restore_host(engine.before, bridges)
    if not problems:
        record.unlink(missing_ok=True)
    return problems


def stop_recorded(record: Path) -> list[str]:
    """stop_engine for the engine in the record, if it is from this boot; else just forget it."""
    engine = StartedEngine.load(record)
    if engine is None:
        record.unlink(missing_ok=True)
        return []
    return stop_engine(engine, record)
