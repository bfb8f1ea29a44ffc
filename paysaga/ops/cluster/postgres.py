"""A throwaway PostgreSQL server for tests and local runs: initdb in a fresh directory, start on a
free port on loopback, create databases, stop and delete everything.

Uses the PostgreSQL binaries on the machine (PAYSAGA_PG_BIN, else /usr/lib/postgresql/*/bin, else
PATH). The server refuses to run as root, so as root it runs as the 'postgres' user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "paysaga"
START_TIMEOUT_S = 30
# The synchronous standby's name (its cluster_name, which its WAL receiver reports).
STANDBY_NAME = "paysaga_standby"


class PostgresUnavailable(Exception):
    """No PostgreSQL binaries here; the message says what was looked for."""


def find_binaries() -> Path:
    installed = sorted((str(path) for path in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    candidates = [os.environ.get("PAYSAGA_PG_BIN", ""), *installed]
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable(
        "PostgreSQL binaries (initdb, pg_ctl) not found: install PostgreSQL or set PAYSAGA_PG_BIN"
    )


class ThrowawayPostgres:
    """A server of its own; with synchronous_standby, a commit returns only once a standby named
    STANDBY_NAME has applied it (ThrowawayStandby; synchronous_commit = remote_apply, which the
    services ask for). The setting is given on the command line, not in the data directory, so a
    standby copied from it and promoted does not wait for a standby of its own."""

    def __init__(self, port: int, binaries: Path | None = None, *, synchronous_standby: bool = False) -> None:
        self.port = port
        self.synchronous_standby = synchronous_standby
        self.binaries = binaries or find_binaries()
        # Not under a root-only temporary directory: the server's user must reach it.
        self.directory = Path(tempfile.mkdtemp(prefix="paysaga-pg-"))
        self.data = self.directory / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.directory, ignore_errors=True)
                raise PostgresUnavailable(
                    "running as root, and PostgreSQL refuses root: create a 'postgres' user to run it as"
                ) from None
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [*self._as_user, str(self.binaries / program), *args], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stderr or result.stdout}")

    def start(self) -> None:
        """Start the server; on failure, stop whatever started, delete the directory, and raise with
        the server's log."""
        try:
            self._start()
        except BaseException as error:
            log = self.directory / "server.log"
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self.stop()
            if isinstance(error, RuntimeError):
                raise RuntimeError(f"{error}\n{detail}") from None
            raise

    def _start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=200"
        if self.synchronous_standby:
            # pg_ctl hands the options to a shell: the quotes keep the setting one word.
            options += f" -c 'synchronous_standby_names=ANY 1 ({STANDBY_NAME})' -c synchronous_commit=remote_apply"
        self._pg_ctl_start(options)

    def _pg_ctl_start(self, options: str) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.directory / "server.log"),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        )

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and delete its directory."""
        self.halt()
        shutil.rmtree(self.directory, ignore_errors=True)

    def halt(self, modes: tuple[str, ...] = ("fast", "immediate")) -> None:
        """Stop the server, keeping its data ("immediate" alone: as a crash would)."""
        if (self.data / "postmaster.pid").exists():
            for mode in modes:
                command = [
                    *self._as_user,
                    str(self.binaries / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-m",
                    mode,
                    "-w",
                    "stop",
                ]
                try:
                    if subprocess.run(command, capture_output=True, timeout=60).returncode == 0:
                        break
                except subprocess.TimeoutExpired:
                    continue


class ThrowawayStandby(ThrowawayPostgres):
    """A hot standby of a ThrowawayPostgres, streaming from it (pg_basebackup -R), named
    STANDBY_NAME: the primary's synchronous standby. It can be stopped and started again, and
    promoted to take over as the primary."""

    def __init__(self, primary: ThrowawayPostgres, port: int) -> None:
        super().__init__(port, primary.binaries)
        self.primary = primary

    def _start(self) -> None:
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(self.primary.port), "-U", SUPERUSER),
            *("-D", str(self.data), "-R", "-X", "stream", "--no-sync"),
        )
        self.resume()

    def resume(self) -> None:
        """Start (again) and stream from the primary."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c cluster_name={STANDBY_NAME}"
        options += " -c max_connections=200"  # a hot standby needs at least what its primary has
        self._pg_ctl_start(options)

    def promote(self) -> None:
        """Make it a primary: it stops following and takes writes (no standby of its own)."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", str(START_TIMEOUT_S), "promote")


@contextlib.contextmanager
def primary_and_standby(primary_port: int, standby_port: int) -> Iterator[tuple[ThrowawayPostgres, ThrowawayStandby]]:
    """A throwaway primary that waits for its synchronous standby, and that standby, streaming;
    both stopped and deleted on leaving."""
    primary = ThrowawayPostgres(primary_port, synchronous_standby=True)
    standby = ThrowawayStandby(primary, standby_port)
    try:
        primary.start()
        standby.start()
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()
