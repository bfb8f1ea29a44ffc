"""python -m paysaga.ops.compose: run the docker-compose cluster for real, check it from the host, tear it down.

  python3 scripts/dev.py compose-test                 # the default cluster
  python3 scripts/dev.py compose-test --production    # the production profile (PostgreSQL, 2 replicas each)
  python3 scripts/dev.py compose-test --standby       # the production profile with a synchronous PostgreSQL standby
  python3 scripts/dev.py compose-test --all           # all three, sharing the engine and the images (CI)
  python3 scripts/dev.py compose-engine               # only an engine and the base image, for docker compose by hand
  python3 scripts/dev.py compose-engine --stop        # stop the dockerd paysaga started, restore the host

compose-test uses the running Docker engine, or, as root on Debian where none runs, installs and
starts one and stops it afterwards, leaving the host's network and firewall as they were. It
builds on python:3.11-slim where a registry is reachable, else on a base image built from Debian
packages, and runs each cluster as a project of its own (paysaga-test-<random>), removed with its
volumes at the end. Exits 0 when every check passed, 1 when one failed, 2 when no engine or base
image could be had.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

from paysaga.ops.cluster.localcluster import free_port
from paysaga.ops.compose import checks, engine, images, reconciliation, standby
from paysaga.ops.compose.project import DEFAULT, PRODUCTION, REPO, STANDBY, ComposeError, ComposeProject, Topology

STATE_DIR = REPO / ".run" / "compose-test"
ENGINE_RECORD = STATE_DIR / "engine.json"
# The compose projects a run created and has not removed yet, one name per line.
PROJECTS_RECORD = STATE_DIR / "projects"
FAILURES = (engine.EngineError, ComposeError, checks.CheckFailed, KeyboardInterrupt)


def say(text: str) -> None:
    print(text, flush=True)


def detail(text: str) -> None:
    say(f"    {text}")


class Interrupts:
    """SIGINT, SIGTERM and SIGHUP end the run by raising KeyboardInterrupt, except while cleaning
    up: a second Ctrl-C or a CI's follow-up SIGTERM must not stop a teardown half-way."""

    def __init__(self) -> None:
        self.shielding = False
        self.pending = False
        for signal_number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signal_number, self._received)

    def _received(self, signal_number: int, _frame: FrameType | None) -> None:
        if self.shielding:
            self.pending = True
            return
        raise KeyboardInterrupt(f"interrupted by signal {signal_number}")

    @contextlib.contextmanager
    def shielded(self, *, then_stop: bool = True) -> Iterator[None]:
        """Signals wait until the block is done; then, with then_stop, one that came ends the run."""
        self.shielding = True
        try:
            yield
        finally:
            self.shielding = False
        if self.pending and then_stop:  # reached only when the block itself raised nothing
            self.pending = False
            raise KeyboardInterrupt("interrupted during a teardown")


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


def _recorded_projects() -> list[str]:
    return PROJECTS_RECORD.read_text().split() if PROJECTS_RECORD.exists() else []


def _record_project(name: str, present: bool) -> None:
    names = [found for found in _recorded_projects() if found != name] + ([name] if present else [])
    PROJECTS_RECORD.write_text("".join(f"{found}\n" for found in names))


def remove_project(project: ComposeProject) -> str | None:
    """down --volumes; None when done, else why not (reported, never raised over an earlier failure)."""
    try:
        project.down()
    except ComposeError as error:
        return str(error)
    _record_project(project.name, present=False)
    return None


def free_ports(count: int) -> list[int]:
    """count different free ports on 127.0.0.1."""
    found: list[int] = []
    while len(found) < count:
        port = free_port()
        found += [] if port in found else [port]
    return found


def test_cluster(topology: Topology, base_image: str, stages: Stages, interrupts: Interrupts) -> None:
    """Build, start, check and tear down one compose project; on a failure, show its state and logs."""
    label = topology.label
    port, oauth_port = free_ports(2)
    environment = {
        "PAYSAGA_BASE_IMAGE": base_image,
        "PAYSAGA_PAYMENTS_PORT": str(port),
        "PAYSAGA_OAUTH_PORT": str(oauth_port),
    }
    reconcile_at = reconciliation.schedule_time(dt.datetime.now(dt.UTC))
    if topology.reconciles:
        environment["PAYSAGA_RECONCILE_AT"] = reconcile_at
    project = ComposeProject(topology, environment, STATE_DIR / f"{label}.log")
    _record_project(project.name, present=True)
    target, oauth_target = f"127.0.0.1:{port}", f"127.0.0.1:{oauth_port}"
    # What the authorization server calls itself (PAYSAGA_OAUTH_ISSUER): its published port on localhost.
    issuer = f"https://localhost:{oauth_port}"
    say(f"    compose project {project.name}, payments published on {target}, OAuth on https://{oauth_target}")
    client_dir = tempfile.TemporaryDirectory(prefix="paysaga-client-")
    try:
        with stages(f"{label}: build the images"):
            project.build()
        with stages(f"{label}: up, until every container is healthy"):
            project.up()
        with stages(f"{label}: a client certificate and token for the host, accounts and stock by ops"):
            client = checks.issue_host_client(project, Path(client_dir.name), "compose-test")
            # Several payers when there are many purchases: each may make 20 a minute (velocity rule).
            wallets = 5 if topology.replicas > 1 else 1
            shop = checks.open_shop(
                project,
                wallets,
                deposit_minor=100_000,
                stock=checks.CHAOS_PURCHASES + 10,
                buyer="compose-test",
                seller="mug-shop",
            )
        with stages(f"{label}: a purchase that completes and one compensated, from the host"):
            ended = asyncio.run(checks.completed_and_compensated(target, client, shop, detail))
        with stages(f"{label}: an OAuth client registered by ops; its token works on payments until revoked"):
            oauth = checks.register_oauth_client(project, Path(client_dir.name), "compose-oauth", detail)
            asyncio.run(checks.token_until_revoked(target, oauth_target, issuer, oauth, topology.replicas, detail))
            detail(checks.check_every_replica_refused(project, oauth))
        if topology.replicas > 1:
            killed = (
                "one replica of each service and a NATS node are"
                if len(topology.nats_nodes) > 1
                else "one replica of each service is"
            )
            with stages(f"{label}: {checks.CHAOS_PURCHASES} purchases while {killed} killed"):
                ended += asyncio.run(checks.purchases_through_kills(project, target, client, shop, detail))
        if topology.standby:
            with stages(f"{label}: a completed payment is on the standby; without it purchases are refused, not held"):
                lines, made = asyncio.run(standby.check_standby(project, target, client, shop))
                ended += made
                for line in lines:
                    detail(line)
        with stages(f"{label}: money and stock agree with the payments; every lane is idle"):
            checks.await_stock_settled(project, shop)
            settled_at = time.monotonic()
            detail(checks.check_books(project, shop, ended))
            detail(checks.check_lanes(project))
        if topology.reconciles:
            with stages(f"{label}: the nightly reconciliation is scheduled; run now, it finds every source agrees"):
                detail(reconciliation.check_scheduler(project, reconcile_at))
                detail(reconciliation.check_database_role(project))
                for line in reconciliation.check_run(project, ended, settled_at):
                    detail(line)
        with stages(f"{label}: nothing else reachable; NATS refuses strangers"):
            detail(checks.check_exposure(project, port, oauth_port))
            detail(checks.check_nats_refuses_strangers(project))
        with stages(f"{label}: a certificate revoked by ops is refused by NATS and by payments"):
            checks.check_revoked_certificate_refused(project, target, Path(client_dir.name), detail)
    except (*FAILURES, Exception):
        with interrupts.shielded():
            say(f"\n--- {project.name}: containers and their last log lines ---\n{project.diagnostics()}")
        raise
    finally:
        client_dir.cleanup()
        with interrupts.shielded(), stages(f"{label}: down, volumes removed"):
            problem = remove_project(project)
            if problem:
                detail(f"could not remove {project.name}: {problem}")
            engine.run(
                ["docker", "image", "prune", "--force", "--filter", f"label={images.PROJECT_LABEL}"],
                timeout_s=300,
                check=False,
            )


def start_engine(stages: Stages) -> engine.StartedEngine | None:
    """A Docker engine with compose v2: the running one (None), or one started now."""
    with stages("a Docker engine"):
        started = None
        version = engine.engine_version()
        if version is None:
            started = engine.start_engine(ENGINE_RECORD, STATE_DIR / "dockerd.log", say)
            version = engine.engine_version()
        engine.ensure_compose(say)
        detail(f"Docker engine {version}{' (started now)' if started else ' (already running)'}")
        return started


def base_image(args: argparse.Namespace, stages: Stages) -> str:
    with stages("the base image"):
        extra_ca = None if args.extra_ca_certs == "none" else Path(args.extra_ca_certs)
        return images.choose_base_image(
            args.base_image, lambda: images.DebianBase.from_host(extra_ca, args.debian_mirror), detail
        )


def stop_engine(started: engine.StartedEngine) -> list[str]:
    problems = engine.stop_engine(started, ENGINE_RECORD)
    for problem in problems:
        detail(f"not restored: {problem}")
    if not problems:
        detail("dockerd and everything it started are stopped; its links, nftables tables and sysctls as before")
    return problems


def stop_command() -> int:
    """Remove the compose projects a run left, then stop the dockerd paysaga started, restore the host."""
    problems = []
    if _recorded_projects() and engine.engine_version() is not None:
        for name in _recorded_projects():
            # The standby topology's files name every service any cluster has, so down removes all of it.
            problem = remove_project(ComposeProject(STANDBY, {}, STATE_DIR / "stop.log", name=name))
            detail(f"compose project {name}: {problem or 'removed, with its volumes'}")
            problems += [problem] if problem else []
    if not ENGINE_RECORD.exists():
        say("no dockerd started by paysaga is recorded; nothing more to stop")
        return 1 if problems else 0
    started = engine.StartedEngine.load(ENGINE_RECORD)
    if started is None:
        ENGINE_RECORD.unlink()
        say("the recorded dockerd is from an earlier boot; nothing of it is left")
        return 1 if problems else 0
    problems += stop_engine(started)
    return 1 if problems else 0


def engine_command(args: argparse.Namespace) -> int:
    stages = Stages()
    try:
        start_engine(stages)
        image = base_image(args, stages)
    except engine.EngineError as error:
        say(f"compose-engine: {error}")
        return 2
    if ENGINE_RECORD.exists():
        say("\nThe engine runs until: python3 scripts/dev.py compose-engine --stop")
    if image != images.OFFICIAL_BASE:
        say(f"\nNo registry here: build on the image made from Debian packages. Before docker compose, run:\n"
            f"  export PAYSAGA_BASE_IMAGE={image}")  # fmt: skip
    return 0


def test_command(args: argparse.Namespace, interrupts: Interrupts) -> int:
    topologies = (
        [DEFAULT, PRODUCTION, STANDBY]
        if args.all
        else [PRODUCTION]
        if args.production
        else [STANDBY]
        if args.standby
        else [DEFAULT]
    )
    stages = Stages()
    started: engine.StartedEngine | None = None
    failure: BaseException | None = None
    prepared = False
    engine_recorded_before = ENGINE_RECORD.exists()
    try:
        started = start_engine(stages)
        image = base_image(args, stages)
        prepared = True
        for topology in topologies:
            test_cluster(topology, image, stages, interrupts)
    except FAILURES as error:
        failure = error
    except Exception as error:  # noqa: BLE001 - a bug of ours: still tear down, restore and report
        traceback.print_exc()
        failure = error
    finally:
        if started is None and not engine_recorded_before and ENGINE_RECORD.exists():
            started = engine.StartedEngine.load(ENGINE_RECORD)  # interrupted while it was starting
        if started is not None and not args.keep_engine:
            with interrupts.shielded(then_stop=False), stages("stop dockerd and put the host back"):
                problems = stop_engine(started)
                if problems and failure is None:
                    failure = engine.EngineError("the host was not restored: " + "; ".join(problems))
        stages.report()
    if failure is not None:
        say(f"\ncompose-test FAILED: {failure}")
        return 1 if prepared else 2
    say("\ncompose-test passed")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m paysaga.ops.compose", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    test = commands.add_parser("test", help="run the compose cluster for real and check it (compose-test)")
    which = test.add_mutually_exclusive_group()
    which.add_argument("--production", action="store_true", help="test the production profile only")
    which.add_argument("--standby", action="store_true", help="test the production profile with a PostgreSQL standby")
    which.add_argument(
        "--all", action="store_true", help="test the default cluster, the production profile, then it with a standby"
    )
    test.add_argument(
        "--keep-engine",
        action="store_true",
        help="leave a dockerd this started running; stop it later with: compose-engine --stop",
    )
    prepare = commands.add_parser(
        "engine", help="only a Docker engine and the base image, for using docker compose by hand (compose-engine)"
    )
    prepare.add_argument(
        "--stop",
        action="store_true",
        help="remove what an interrupted compose-test left, stop the dockerd paysaga started, restore the host",
    )
    for command in (test, prepare):
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupts = Interrupts()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    if args.command == "engine":
        if args.stop:
            with interrupts.shielded(then_stop=False):
                return stop_command()
        return engine_command(args)
    return test_command(args, interrupts)


if __name__ == "__main__":
    sys.exit(main())
