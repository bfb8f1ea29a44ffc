#!/usr/bin/env python3
"""Developer entry point; needs nothing but Python 3.11+.

  python3 scripts/dev.py run     # set up, then start the local cluster (Ctrl-C stops it)
  python3 scripts/dev.py test    # set up, then lint, type-check and run the whole test suite
  python3 scripts/dev.py bench   # set up, then benchmark a fresh local cluster (README: "Benchmark")
  python3 scripts/dev.py chaos   # set up, then the seeded chaos suite (root; --short: the CI run; --seed N)
  python3 scripts/dev.py compose-test    # set up, then run the docker-compose cluster for real and check it
  python3 scripts/dev.py compose-engine  # a Docker engine and the base image for docker compose (--stop: stop it)
  python3 scripts/dev.py setup   # only the set-up: .venv, dependencies, protobuf stubs
  python3 scripts/dev.py stubs   # regenerate the committed protobuf stubs from protos/
  python3 scripts/dev.py lint    # ruff, mypy and the import contracts

Set-up is incremental: the virtualenv is created once, dependencies are reinstalled only when
pyproject.toml or constraints.txt change. Arguments after ``test --`` go to pytest, arguments
after ``run --`` go to paysaga-local (e.g. ``run -- --payments-port 6051``), arguments after
``bench --`` to the benchmark (e.g. ``bench -- --duration-s 20``). compose-test and
compose-engine take their own options directly (``--production``, ``--all``, ``--stop``,
``--help``; README: "Running with docker-compose"), and so does chaos (``--short``, ``--seed N``,
``--purchases N``, ``--faults N``; README: "The chaos suite").
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
BIN = VENV / "bin"
PYTHON = BIN / "python"
STAMP = VENV / ".paysaga-installed"
LINT_TARGETS = ["paysaga", "services", "scripts", "tests", "bench"]


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def ensure_browser() -> None:
    """Under CI the HTML reports are opened in Debian's chromium (elsewhere those tests skip,
    naming it): install it where it is missing and we may (root, apt)."""
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes") or shutil.which("chromium"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    install = "from paysaga.ops.compose.engine import apt_install; apt_install(['chromium'], print)"
    call(PYTHON, "-c", install)


def call(*command: str | Path) -> int:
    return subprocess.call([str(part) for part in command], cwd=REPO)


def check(*command: str | Path) -> None:
    code = call(*command)
    if code != 0:
        raise SystemExit(code)


def install_fingerprint() -> str:
    digest = hashlib.sha256(sys.version.encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((REPO / name).read_bytes())
    return digest.hexdigest()


def setup(*, refresh_stubs: bool) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs on whatever python3 the user has
        raise SystemExit(f"paysaga needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        say(f"creating the virtualenv in {VENV.relative_to(REPO)}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = install_fingerprint()
    if not STAMP.exists() or STAMP.read_text() != fingerprint:
        say("installing paysaga and its development dependencies (pinned in constraints.txt)")
        check(
            PYTHON,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            "constraints.txt",
            "-e",
            ".[dev]",
        )
        STAMP.write_text(fingerprint)
    if refresh_stubs:
        check(PYTHON, "scripts/generate_stubs.py")


def lint() -> int:
    say("ruff")
    code = call(BIN / "ruff", "check", *LINT_TARGETS)
    say("mypy")
    code = call(BIN / "mypy") or code
    say("import contracts (pyproject.toml: [tool.importlinter])")
    return call(BIN / "lint-imports", "--no-cache") or code


def main(argv: list[str]) -> int:
    command, *rest = argv or ["--help"]
    if "--" in rest:
        rest = rest[rest.index("--") + 1 :]
    if command in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    if command == "setup":
        setup(refresh_stubs=False)
        return 0
    if command == "stubs":
        setup(refresh_stubs=True)
        return 0
    if command == "lint":
        setup(refresh_stubs=False)
        return lint()
    if command == "test":
        # Stubs are not refreshed here: the suite itself fails when the committed ones are stale.
        setup(refresh_stubs=False)
        ensure_browser()
        lint_code = lint()
        say("pytest")
        test_code = call(PYTHON, "-m", "pytest", *rest)
        return test_code or lint_code
    if command == "run":
        setup(refresh_stubs=True)
        say("starting the local cluster")
        os.chdir(REPO)
        # The runner replaces this process so Ctrl-C reaches it directly.
        os.execv(  # noqa: S606 - a fixed program with our own arguments
            str(BIN / "paysaga-local"),
            ["paysaga-local", "--state-dir", ".run", "--certs-dir", "certs", "--demo", *rest],
        )
    if command in ("compose-test", "compose-engine"):
        setup(refresh_stubs=False)
        os.chdir(REPO)
        action = command.removeprefix("compose-")
        os.execv(str(PYTHON), [str(PYTHON), "-m", "paysaga.ops.compose", action, *rest])  # noqa: S606 - our own module
    if command == "chaos":
        setup(refresh_stubs=False)
        os.chdir(REPO)
        os.execv(str(PYTHON), [str(PYTHON), "-m", "tests.chaos", *rest])  # noqa: S606 - our own module
    if command == "bench":
        setup(refresh_stubs=True)
        os.chdir(REPO)
        os.execv(str(PYTHON), [str(PYTHON), "-m", "bench", *rest])  # noqa: S606 - our own module
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
