"""python -m paysaga.compose: run the docker-compose cluster for real, check it from the host, tear it down.

  python3 scripts/dev.py compose-test                 # the default cluster
  python3 scripts/dev.py compose-test --production    # the production profile (PostgreSQL, 2 replicas each)
  python3 scripts/dev.py compose-test --all           # both, sharing the engine and the images (CI)
  python3 scripts/dev.py compose-engine               # only an engine and the base image, for docker compose by hand
  python3 scripts/dev.py compose-engine --stop        # remove our projects, stop the dockerd paysaga started

Uses the running Docker engine, or, as root on Debian where none runs, installs and starts one and
stops it afterwards, leaving the host's network and firewall as they were. Builds on
python:3.11-slim where a registry is reachable, else on a base image built from Debian packages.
Exits 0 when every check passed, 1 when one failed, 2 when no engine could be had.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from paysaga.compose import checks, engine, images
from paysaga.compose.project import DEFAULT, PRODUCTION, REPO, ComposeError, ComposeProject, Topology

STATE_DIR = REPO / ".run" / "compose-test"


def say(text: str) -> None:
    print(text, flush=True)


def detail(text: str) -> None:
    say(f"    {text}")


class Stages:
    """Named, timed steps; the table of their times is printed at the end, whatever happened."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float, str]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        say(f"==> {name}")
        started = time.monotonic()
        outcome = "failed"
        try:
            yield
            outcome = "ok"
        finally:
            self.times.append((name, time.monotonic() - started, outcome))

    def report(self) -> None:
        width = max((len(name) for name, _, _ in self.times), default=0)
        say("\ncompose-test stages:")
        for name, seconds, outcome in self.times:
            say(f"  {name.ljust(width)}  {seconds:7.1f} s  {outcome}")
        say(f"  {'total'.ljust(width)}  {sum(seconds for _, seconds, _ in self.times):7.1f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_cluster(topology: Topology, base_image: str, port: int, stages: Stages) -> None:
    """Build, start, check and tear down one compose project; on a failure, show its state and logs."""
    label = "production" if topology is PRODUCTION else "default"
    environment = {"PAYSAGA_BASE_IMAGE": base_image, "PAYSAGA_PAYMENTS_PORT": str(port)}
    project = ComposeProject(topology, environment, STATE_DIR / f"{topology.name}.log")
    target = f"127.0.0.1:{port}"
    try:
        with stages(f"{label}: build the images"):
            project.build()
        listening_before = checks.listening_sockets()
        with stages(f"{label}: up, until every container is healthy"):
            project.up()
        with stages(f"{label}: a client certificate and token for the host, accounts and stock by ops"):
            client = checks.issue_host_client(project, Path(tempfile.mkdtemp(prefix="paysaga-client-")), "compose-test")
            shop = checks.open_shop(
                project,
                wallets=1 if topology is DEFAULT else 5,
                deposit_minor=100_000,
                stock=10 if topology is DEFAULT else checks.CHAOS_PURCHASES + 10,
            )
        with stages(f"{label}: a purchase that completes and one compensated, from the host"):
            ended = asyncio.run(checks.completed_and_compensated(target, client, shop, detail))
        if topology is PRODUCTION:
            with stages(f"{label}: {checks.CHAOS_PURCHASES} purchases while one replica of each service is killed"):
                ended += asyncio.run(checks.purchases_through_kills(project, target, client, shop, detail))
        with stages(f"{label}: money and stock agree with the payments"):
            say(f"    {checks.check_books(project, shop, ended)}")
        with stages(f"{label}: nothing else reachable; NATS refuses strangers"):
            say(f"    {checks.check_exposure(project, port, listening_before)}")
            say(f"    {checks.check_nats_refuses_strangers(project)}")
    except (checks.CheckFailed, ComposeError, engine.EngineError):
        say(f"\n--- {topology.name}: containers and their last log lines ---\n{project.diagnostics()}")
        raise
    finally:
        with stages(f"{label}: down, volumes removed"):
            project.down()
        engine.run(
            ["docker", "image", "prune", "--force", "--filter", f"label={images.PROJECT_LABEL}"],
            timeout_s=300,
            check=False,
        )


def stop(record: Path) -> int:
    """Remove our compose projects, then stop the dockerd we started and restore the host."""
    if engine.engine_version() is not None:
        for topology in (DEFAULT, PRODUCTION):
            with contextlib.suppress(ComposeError):
                ComposeProject(topology, {}, STATE_DIR / f"{topology.name}.log").down()
                detail(f"compose project {topology.name}: removed, with its volumes")
    if not record.exists():
        say("no dockerd started by paysaga is recorded; nothing more to stop")
        return 0
    problems = engine.stop_engine(engine.StartedEngine.load(record), record)
    for problem in problems:
        detail(f"not restored: {problem}")
    if problems:
        return 1
    say("stopped the dockerd paysaga started, and everything it started; links, nftables and sysctls as before")
    return 0


def prepare(args: argparse.Namespace, record: Path, stages: Stages) -> tuple[str, engine.StartedEngine | None]:
    """A Docker engine with compose v2 (the running one, or one started now) and the base image."""
    started = None
    with stages("a Docker engine"):
        version = engine.engine_version()
        if version is None:
            started = engine.start_engine(record, STATE_DIR / "dockerd.log", say)
            version = engine.engine_version()
        engine.ensure_compose(say)
        detail(f"Docker engine {version}{' (started now)' if started else ' (already running)'}")
    with stages("the base image"):
        extra_ca = None if args.extra_ca_certs == "none" else Path(args.extra_ca_certs)
        base = images.DebianBase.from_host(extra_ca, args.debian_mirror)
        return images.choose_base_image(args.base_image, base, detail), started


def engine_command(args: argparse.Namespace, record: Path) -> int:
    if args.stop:
        return stop(record)
    try:
        base_image, started = prepare(args, record, Stages())
    except engine.EngineError as error:
        say(f"compose-engine: {error}")
        return 2
    if started is not None or record.exists():
        say("\nThe engine runs until: python3 scripts/dev.py compose-engine --stop")
    if base_image != images.OFFICIAL_BASE:
        say(
            f"\nNo registry here: build on the image made from Debian packages. Before docker compose, run:\n"
            f"  export PAYSAGA_BASE_IMAGE={base_image}"
        )
    return 0


def test_command(args: argparse.Namespace, record: Path) -> int:
    topologies = [DEFAULT, PRODUCTION] if args.all else [PRODUCTION] if args.production else [DEFAULT]
    stages = Stages()
    started: engine.StartedEngine | None = None
    failure: BaseException | None = None
    engine_ready = False
    try:
        base_image, started = prepare(args, record, stages)
        engine_ready = True
        for topology in topologies:
            test_cluster(topology, base_image, args.port or free_port(), stages)
    except (engine.EngineError, ComposeError, checks.CheckFailed, KeyboardInterrupt) as error:
        failure = error
    finally:
        if started is not None and not args.keep_engine:
            with stages("stop dockerd and put the host back"):
                problems = engine.stop_engine(started, record)
                for problem in problems:
                    detail(f"not restored: {problem}")
                if problems and failure is None:
                    failure = engine.EngineError("the host was not restored: " + "; ".join(problems))
                elif not problems:
                    detail("dockerd and everything it started are stopped; links, nftables and sysctls as before")
        stages.report()
    if failure is not None:
        say(f"\ncompose-test FAILED: {failure}")
        return 1 if engine_ready else 2
    say("\ncompose-test passed")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m paysaga.compose", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    test = commands.add_parser("test", help="run the compose cluster for real and check it (compose-test)")
    which = test.add_mutually_exclusive_group()
    which.add_argument("--production", action="store_true", help="test the production profile only")
    which.add_argument("--all", action="store_true", help="test the default cluster, then the production profile")
    test.add_argument("--port", type=int, default=0, help="host port for payments on 127.0.0.1 (default: a free one)")
    test.add_argument(
        "--keep-engine",
        action="store_true",
        help="leave a dockerd this started running; stop it later with: compose-engine --stop",
    )
    engine_parser = commands.add_parser(
        "engine", help="only a Docker engine and the base image, for using docker compose by hand (compose-engine)"
    )
    engine_parser.add_argument(
        "--stop", action="store_true", help="remove our compose projects, stop the dockerd paysaga started"
    )
    for command in (test, engine_parser):
        command.add_argument(
            "--base-image",
            choices=["auto", "python", "debian"],
            default="auto",
            help="auto: python:3.11-slim if present or pullable, else built from Debian packages (default)",
        )
        command.add_argument(
            "--extra-ca-certs",
            default=os.environ.get("PAYSAGA_EXTRA_CA_CERTS", str(images.HOST_EXTRA_CA_DIR)),
            metavar="DIR|none",
            help="CA certificates (*.crt) the image built from Debian packages trusts, e.g. an HTTPS proxy's "
            "(default: $PAYSAGA_EXTRA_CA_CERTS, else %(default)s)",
        )
        command.add_argument(
            "--debian-mirror", default=None, help="Debian archive (default: the one the host's apt uses)"
        )
    return parser.parse_args(argv)


def _interrupted(signal_number: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal_number}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A CI timeout or a closed terminal must still tear down and put the host back.
    for signal_number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signal_number, _interrupted)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    record = STATE_DIR / "engine.json"
    if args.command == "engine":
        return engine_command(args, record)
    return test_command(args, record)


if __name__ == "__main__":
    sys.exit(main())
