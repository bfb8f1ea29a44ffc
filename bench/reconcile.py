"""The nightly reconciliation's speed: many finished purchases (bench.reconcile_fixture) in real
SQLite databases and a real nats-server (TLS, our permissions), reconciled by paysaga-reconcile
as its own process, as its own identity, with a settlement file. Wall time, CPU and peak memory;
and the raw limits of the same machine in the same run: reading the same streams without doing
anything with the events, and scanning the same tables.

    python -m bench.reconcile --sagas 100000      # alone; also part of python -m bench
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import limits
from bench.reconcile_fixture import SERVICES, database_path, generate
from paysaga.ops.cluster import natsconf
from paysaga.ops.cluster.localcluster import find_nats_server, free_port
from paysaga.ops.pki import rotation
from paysaga.runtime.messaging import streams
from paysaga.runtime.settings import TlsFiles
from services.reconcile import settlement, sources
from services.reconcile.observations import SettlementLine

TARGET_S = 300.0
CONNECT_TIMEOUT_S = 30.0
RUN_TIMEOUT_S = 1800.0
RAW_TABLES = {"payments": "payments", "ledger": "journal_lines", "inventory": "reservations"}


async def raw_stream_read(client: Any) -> tuple[int, float]:
    """Every message of the three events streams, read as the reconciliation reads them but
    left undecoded: the ceiling of its stream reading."""
    count = 0

    def take(_: object) -> None:
        nonlocal count
        count += 1

    started = time.monotonic()
    for service in SERVICES:
        spec = streams.owned_streams(service)[0]
        await sources.read_stream(client, spec.name, spec.subjects[0], None, take, covers=None)
    return count, time.monotonic() - started


def raw_table_scan(data_dir: Path) -> tuple[int, float]:
    """Every row of the biggest tables, fetched and dropped: the ceiling of its database reading."""
    rows, started = 0, time.monotonic()
    for service, table in RAW_TABLES.items():
        with sqlite3.connect(database_path(data_dir, service)) as connection:
            for _ in connection.execute(f"SELECT * FROM {table}"):  # noqa: S608 - our own table names
                rows += 1
    return rows, time.monotonic() - started


async def reconcile_run(command: list[str]) -> tuple[int, float, float, float]:
    """Run the reconciliation; its exit status, wall seconds, CPU seconds and peak RSS in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(*command)
    code = await asyncio.wait_for(process.wait(), RUN_TIMEOUT_S)
    wall_s = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return code, wall_s, cpu_s, after.ru_maxrss / 1024


async def measure(certs_dir: Path, work_dir: Path, sagas: int, seed: int = 1) -> dict[str, Any]:
    port = free_port()
    config = work_dir / "nats-reconcile.conf"
    work_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    config.write_text(
        natsconf.render(
            server_name="bench-reconcile",
            host="127.0.0.1",
            port=port,
            tls=TlsFiles.in_directory(certs_dir, "nats"),
            store_dir=work_dir / "jetstream",
            fsync_always=False,
        )
    )
    url = f"tls://127.0.0.1:{port}"
    data_dir = work_dir / "data"
    end = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    async with limits.running([find_nats_server(), "-c", str(config)]):
        started = time.monotonic()
        fixture = await generate(data_dir, url, certs_dir, sagas, end, seed)
        generate_s = time.monotonic() - started
        client = await streams.connect(
            url, TlsFiles.in_directory(certs_dir, "reconcile"), name="bench", timeout_s=CONNECT_TIMEOUT_S
        )
        try:
            messages, stream_s = await raw_stream_read(client)
        finally:
            await client.close()
        rows, scan_s = raw_table_scan(data_dir)
        settlement_file = work_dir / "settlement.csv"
        settlement_file.write_text(
            settlement.render(
                SettlementLine(0, payment_id, kind, amount, "EUR", moment.date())
                for payment_id, kind, amount, moment in fixture.settled
            )
        )
        own = TlsFiles.in_directory(certs_dir, "reconcile")
        report_file = work_dir / "reconciliation.json"
        command = [sys.executable, "-m", "services.reconcile", "--until", end.isoformat(), "--nats-url", url]
        command += ["--cert", str(own.cert_file), "--key", str(own.key_file), "--ca", str(own.ca_file)]
        for service in SERVICES:
            command += [f"--{service}-db", f"sqlite+aiosqlite:///{database_path(data_dir, service)}"]
        command += ["--settlement", str(settlement_file), "--json", str(report_file), "--quiet"]
        code, wall_s, cpu_s, peak_rss_mib = await reconcile_run(command)
    found = json.loads(report_file.read_text()) if report_file.exists() else {}
    counts = found.get("counts") or {}
    events = int(counts.get("events", 0))
    return {
        "sagas": sagas,
        "exit_code": code,
        "verdict": found.get("verdict"),
        "mismatches": counts.get("mismatches"),
        "sagas_checked": counts.get("sagas"),
        "events": events,
        "settlement_lines": counts.get("settlement_lines"),
        "generate_s": round(generate_s, 1),
        "wall_s": round(wall_s, 1),
        "target_s": TARGET_S,
        "sagas_per_s": round(sagas / wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "cpu_ms_per_saga": round(cpu_s * 1000 / sagas, 3),
        "peak_rss_mib": round(peak_rss_mib, 1),
        "raw_limits": {
            "stream_messages_per_s": round(messages / stream_s, 1),
            "table_rows_per_s": round(rows / scan_s, 1),
        },
        "ratios": {
            # Of what reading the streams alone takes, per event.
            "events_per_s_of_raw_stream_read": round((events / wall_s) / (messages / stream_s), 4),
        },
    }


def lines(result: dict[str, Any]) -> list[str]:
    raw = result["raw_limits"]
    return [
        "",
        "Reconciliation",
        f"  {result['sagas']} purchases ({result['events']} events, {result['settlement_lines']} settlement lines) "
        f"reconciled in {result['wall_s']:.1f} s: {result['sagas_per_s']:.0f} per s (target {result['target_s']:.0f} s "
        f"for 100,000: {result['wall_s'] * 100_000 / result['sagas'] / result['target_s']:.2f} of it); "
        f"verdict {result['verdict']}, exit {result['exit_code']}",
        f"  cost                {result['cpu_ms_per_saga']:.3f} ms CPU per purchase, "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB",
        f"  raw limits          streams read undecoded {raw['stream_messages_per_s']:.0f} messages/s, tables scanned "
        f"{raw['table_rows_per_s']:.0f} rows/s; the run read {result['ratios']['events_per_s_of_raw_stream_read']:.2f} "
        "of the raw stream rate (events per s)",
        f"  fixture             {result['generate_s']:.0f} s to write (bench/reconcile_fixture.py)",
    ]


def main() -> int:
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # TLS close notices of the clients
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__)
    parser.add_argument("--sagas", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="paysaga-bench-reconcile-") as directory:
        work_dir = Path(directory)
        certs_dir = work_dir / "certs"
        for _ in rotation.bootstrap(certs_dir, certs_dir):
            pass
        result = asyncio.run(measure(certs_dir, work_dir / "run", arguments.sagas, arguments.seed))
    print(json.dumps(result, indent=2))
    print("\n".join(lines(result)))
    return 0 if result["verdict"] == "reconciled" else 1


if __name__ == "__main__":
    sys.exit(main())
