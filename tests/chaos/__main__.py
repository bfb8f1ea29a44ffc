"""The chaos suite: python3 scripts/dev.py chaos [--seed N] [--purchases N] [--faults N] [--short].

Creates the network namespaces (root, iproute2), runs the cluster and the load inside them
(tests.chaos.run, in the client's namespace), prints the verdict, and removes every namespace it
made, whatever happened. Exit status: 0 nothing lost or doubled, 1 a problem found, 2 cannot run
here (the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from paysaga.ops.cluster.localcluster import AUTHORIZATION_SERVER, SERVICES
from tests.chaos.network import Network, NetworkError, check_available
from tests.chaos.run import NATS_NODES

MEMBERS = ("client", *NATS_NODES, *SERVICES, AUTHORIZATION_SERVER)
SHORT = {"purchases": 300, "faults": 6}
LONG = {"purchases": 10_000, "faults": 24}
STOP_TIMEOUT_S = 30


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 scripts/dev.py chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="replays a run (default: a new one, printed)")
    parser.add_argument("--short", action="store_true", help=f"the CI run: {SHORT}")
    parser.add_argument("--purchases", type=int, help=f"default {LONG['purchases']}")
    parser.add_argument("--faults", type=int, help=f"at least 3 (default {LONG['faults']})")
    parser.add_argument("--work-dir", type=Path, help="keep logs and databases here (default: a temporary one)")
    args = parser.parse_args()
    # A CI job's timeout sends SIGTERM: end as Ctrl-C does, through the clean-up below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sizes = SHORT if args.short else LONG
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    try:
        check_available()
    except NetworkError as error:
        print(f"chaos: cannot run here: {error}", file=sys.stderr)
        return 2
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="paysaga-chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    network = Network(f"psc{os.getpid() % 100000}", f"10.213.{seed % 250}")
    print(f"chaos | seed {seed}; work directory {work_dir}", flush=True)
    try:
        network.create()
        for member in MEMBERS:
            network.add(member)
        arguments = {
            "prefix": network.prefix,
            "subnet": network.subnet,
            "members": network.members,
            "work_dir": str(work_dir.resolve()),
            "seed": seed,
            "purchases": args.purchases or sizes["purchases"],
            "faults": args.faults or sizes["faults"],
        }
        command = [*network.run_in("client"), sys.executable, "-m", "tests.chaos.run", json.dumps(arguments)]
        # Its own process group: stopped whole (the cluster's processes die with it) if this is.
        run = subprocess.Popen(command, start_new_session=True)
        try:
            code = run.wait()
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGTERM)
                try:
                    run.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    os.killpg(run.pid, signal.SIGKILL)
                    run.wait()
    except NetworkError as error:
        print(f"chaos: {error}", file=sys.stderr)
        code = 2
    finally:
        failed = network.remove()
        left = network.leftovers()
        if failed or left:
            print(f"chaos: could not remove every namespace: {failed or left}", file=sys.stderr)
            code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
