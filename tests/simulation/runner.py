"""Running many seeds: in a temporary directory each (in memory where the machine has /dev/shm),
spread over the machine's cores, each failure with the command that replays it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.simulation.world import CURRENT_CODE, ServiceCode, run

SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None


def replay_command(seed: int, variant: str = "current") -> str:
    extra = f" --variant {variant}" if variant != "current" else ""
    return f".venv/bin/python -m tests.simulation --seed {seed}{extra}"


def variant_code(variant: str) -> Mapping[str, ServiceCode]:
    """The services' code for a variant: current, old (the saga before money moved first) or
    trusting (an inventory that trusts events to come in order)."""
    from tests.simulation.old_handlers import OLD_CODE  # only the variants need them
    from tests.simulation.trusting_handlers import TRUSTING_CODE

    return {"current": CURRENT_CODE, "old": OLD_CODE, "trusting": TRUSTING_CODE}[variant]


async def _run_seeds(seeds: Sequence[int], variant: str) -> list[tuple[int, list[str]]]:
    code = variant_code(variant)
    failures = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="paysaga-sim-", dir=SCRATCH) as directory:
            world = await run(seed, Path(directory), code)
        if world.problems:
            failures.append((seed, world.problems))
    return failures


def run_seeds(seeds: Sequence[int], variant: str = "current") -> list[tuple[int, list[str]]]:
    """(seed, problems) for every seed whose world did not end well, in this process."""
    logging.disable(logging.WARNING)  # the handlers' own warnings (timeouts) are expected here
    return asyncio.run(_run_seeds(seeds, variant))


def run_seeds_in_parallel(seeds: Sequence[int], variant: str = "current") -> list[tuple[int, list[str]]]:
    """run_seeds over one worker process per core (fresh interpreters: nothing inherited)."""
    workers = max(1, min(os.cpu_count() or 1, len(seeds)))
    shares = [list(seeds[index::workers]) for index in range(workers)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = pool.map(run_seeds, shares, [variant] * workers)
        return sorted(failure for share in results for failure in share)
