"""Replay one seed of the saga simulator and print what happened, step by step:

.venv/bin/python -m tests.simulation --seed 1234 [--variant old|trusting]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from tests.simulation.runner import SCRATCH, variant_code
from tests.simulation.world import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument(
        "--variant",
        choices=["current", "old", "trusting"],
        default="current",
        help="old: the saga before money moved first; trusting: an inventory that trusts event order",
    )
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    code = variant_code(args.variant)
    with tempfile.TemporaryDirectory(prefix="paysaga-sim-", dir=SCRATCH) as directory:
        world = asyncio.run(run(args.seed, Path(directory), code))
    for number, line in enumerate(world.trace, 1):
        print(f"{number:4} {line}")
    return 1 if world.problems else 0


if __name__ == "__main__":
    sys.exit(main())
