"""paysaga-reconcile: the event streams against every service's database and the bank's
settlement file, for a window (default: the 24 h up to the current minute, with a 48 h look-back).

Exit status: 0 reconciled, 1 mismatches found, 2 incomplete (a source unreachable or not covering
the window; also a usage error). With --at it runs every day at that time (UTC) instead, keeping
the last --keep reports of each form in --report-dir.

Databases are read read-only (SQLite: query_only; PostgreSQL: read-only transactions; give it a
role that may only SELECT, or a standby); NATS as spiffe://paysaga/reconcile, which may read the
services' streams and publish only the reconciliation's own events.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from nats.aio.client import Client as NatsClient

from paysaga.runtime.logs import configure_logging
from paysaga.runtime.messaging import streams
from paysaga.runtime.security import tls
from paysaga.runtime.settings import TlsFiles
from services.reconcile import report as reports
from services.reconcile import sources
from services.reconcile.compare import reconcile
from services.reconcile.domain import EXIT_CODES, Verdict, Window
from services.reconcile.html import as_html
from services.reconcile.observations import Observations
from services.reconcile.publish import publish
from services.reconcile.schedule import keep_newest, next_run, parse_daily_time

log = logging.getLogger(__name__)

IDENTITY = "reconcile"
CONNECT_TIMEOUT_S = 10.0
DEFAULT_STATE_DIR = Path(".run")


@dataclass(frozen=True)
class Options:
    window: Window | None  # None: up to the current minute, at each run
    window_length: dt.timedelta
    lookback: dt.timedelta
    settle: dt.timedelta
    database_urls: dict[str, str]
    nats_url: str
    tls: TlsFiles
    settlement: Path | None
    report_dir: Path | None
    json_file: Path | None
    html_file: Path | None
    publish: bool
    stream_replicas: int
    quiet: bool

    def window_at(self, now: dt.datetime) -> Window:
        if self.window is not None:
            return self.window
        end = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
        return Window(end, self.window_length, self.lookback, self.settle)


async def gather(options: Options, window: Window) -> tuple[reports.Report, NatsClient | None]:
    gathered = sources.Gathered(Observations(window))
    await sources.read_databases(gathered, options.database_urls)
    client = None
    try:
        client = await streams.connect(
            options.nats_url, options.tls, name="paysaga-reconcile", timeout_s=CONNECT_TIMEOUT_S
        )
    except (ConnectionError, OSError, nats.errors.Error, tls.TlsConfigurationError) as error:
        gathered.failed("NATS", "stream", "unavailable", str(error))
    if client is not None:
        await sources.read_streams(gathered, client)
    sources.read_settlement(gathered, options.settlement)
    await sources.other_payments(gathered, options.database_urls["payments"])
    if gathered.incomplete:
        return reports.Report(window, gathered.sources, gathered.incomplete, None, []), client
    mismatches, counts = reconcile(gathered.observed)
    return reports.Report(window, gathered.sources, [], counts, mismatches), client


async def run_once(options: Options, now: dt.datetime) -> int:
    window = options.window_at(now)
    report, client = await gather(options, window)
    try:
        text, json_text = reports.as_text(report), reports.as_json(report)
        if not options.quiet:
            sys.stdout.write(text)
        written = write_reports(options, report, text, json_text)
        for path in written:
            log.info("reconcile.report_written", extra={"path": str(path)})
        exit_code = EXIT_CODES[report.verdict]
        if options.publish and client is not None:
            try:
                count = await publish(client, report, reports.digest(json_text), options.stream_replicas)
            except (nats.errors.Error, TimeoutError) as error:
                log.error("reconcile.publish_failed", extra={"alert": True, "error": repr(error)})
                print(
                    f"paysaga-reconcile: the report was written but not announced on NATS: {error!r}", file=sys.stderr
                )
                return EXIT_CODES[Verdict.INCOMPLETE]
            log.info("reconcile.published", extra={"events": count, "run_id": report.run_id})
        log.info(
            "reconcile.completed",
            extra={"run_id": report.run_id, "verdict": report.verdict.value, "mismatches": len(report.mismatches)},
        )
        return exit_code
    finally:
        if client is not None:
            await client.close()


def write_reports(options: Options, report: reports.Report, text: str, json_text: str) -> list[Path]:
    targets: list[tuple[Path, str]] = []
    html_text = as_html(report) if options.html_file is not None or options.report_dir is not None else ""
    if options.json_file is not None:
        targets.append((options.json_file, json_text))
    if options.html_file is not None:
        targets.append((options.html_file, html_text))
    if options.report_dir is not None:
        stem = f"reconciliation-{report.window.end.astimezone(dt.UTC):%Y%m%dT%H%MZ}"
        targets += [
            (options.report_dir / f"{stem}.json", json_text),
            (options.report_dir / f"{stem}.html", html_text),
            (options.report_dir / f"{stem}.txt", text),
        ]
    for path, content in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(content, encoding="utf-8")
        partial.replace(path)  # a reader never sees half a report
    return [path for path, _ in targets]


async def run_daily(options: Options, at: dt.time, keep: int) -> int:
    """Run every day at `at` (UTC) until SIGTERM or SIGINT; keep the newest `keep` reports."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    while not stop.is_set():
        due = next_run(dt.datetime.now(dt.UTC), at)
        log.info("reconcile.next_run", extra={"at": due.isoformat()})
        try:
            await asyncio.wait_for(stop.wait(), (due - dt.datetime.now(dt.UTC)).total_seconds())
            break
        except TimeoutError:
            pass
        try:
            await run_once(options, due)
        except Exception:  # a failed night is logged and alerted; the next night still runs
            log.exception("reconcile.run_failed", extra={"alert": True})
        if options.report_dir is not None:
            keep_newest(options.report_dir, keep)
    return 0


def parse_time(text: str) -> dt.datetime:
    if text == "now":
        return dt.datetime.now(dt.UTC)
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: end it with Z or +HH:MM")
    return moment.astimezone(dt.UTC)


def _hours(text: str) -> dt.timedelta:
    return dt.timedelta(hours=float(text))


def parser() -> argparse.ArgumentParser:
    environ = os.environ
    state = DEFAULT_STATE_DIR / "data"
    certs = Path(environ.get("PAYSAGA_CERTS_DIR", "certs"))
    own = TlsFiles.in_directory(certs, IDENTITY)
    arguments = argparse.ArgumentParser(prog="paysaga-reconcile", description=__doc__.split("\n\n")[0])
    add = arguments.add_argument
    add("--until", type=parse_time, help="the window's end (ISO 8601 with a zone, or 'now'; default: this minute)")
    add("--window-hours", type=_hours, default=_hours("24"), help="the window's length (default: 24)")
    add("--lookback-hours", type=_hours, default=_hours("48"), help="checked before the window (default: 48)")
    add("--settle-s", type=float, default=300.0, help="a payment active this close to the end is in flight (300)")
    for service in sources.SERVICES:
        variable = f"PAYSAGA_RECONCILE_{service.upper()}_DATABASE_URL"
        default = environ.get(variable, f"sqlite+aiosqlite:///{state / service}.db")
        add(f"--{service}-db", default=default, help=f"{service}'s database URL (${variable}; default: %(default)s)")
    add("--nats-url", default=environ.get("PAYSAGA_NATS_URL", "tls://127.0.0.1:4222"), help="(default: %(default)s)")
    add("--cert", type=Path, default=Path(environ.get("PAYSAGA_TLS_CERT", own.cert_file)))
    add("--key", type=Path, default=Path(environ.get("PAYSAGA_TLS_KEY", own.key_file)))
    add("--ca", type=Path, default=Path(environ.get("PAYSAGA_TLS_CA", own.ca_file)))
    add("--settlement", type=Path, help="the bank's settlement file (CSV; see the README)")
    add("--report-dir", type=Path, help="write reconciliation-<end>.json, .html and .txt here")
    add("--json", type=Path, dest="json_file", help="write the JSON report here")
    add("--html", type=Path, dest="html_file", help="write the HTML report here")
    add("--no-publish", action="store_true", help="do not announce the run and its mismatches on NATS")
    add("--stream-replicas", type=int, default=int(environ.get("PAYSAGA_STREAM_REPLICAS", "1")))
    add("--quiet", action="store_true", help="no terminal report")
    add("--at", type=parse_daily_time, help="run every day at HH:MM UTC (a long-running scheduler) instead of once")
    add("--keep", type=int, default=30, help="with --at and --report-dir: reports of each form kept (default: 30)")
    add("--log-level", default=environ.get("PAYSAGA_LOG_LEVEL", "WARNING"))
    return arguments


def options_from(args: argparse.Namespace) -> Options:
    window = None
    if args.until is not None:
        window = Window(args.until, args.window_hours, args.lookback_hours, dt.timedelta(seconds=args.settle_s))
    return Options(
        window=window,
        window_length=args.window_hours,
        lookback=args.lookback_hours,
        settle=dt.timedelta(seconds=args.settle_s),
        database_urls={service: getattr(args, f"{service}_db") for service in sources.SERVICES},
        nats_url=args.nats_url,
        tls=TlsFiles(args.cert, args.key, args.ca),
        settlement=args.settlement,
        report_dir=args.report_dir,
        json_file=args.json_file,
        html_file=args.html_file,
        publish=not args.no_publish,
        stream_replicas=args.stream_replicas,
        quiet=args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(IDENTITY, args.log_level)
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    try:
        options = options_from(args)
        # The window's limits, checked now even when its end is only known at each run.
        Window(dt.datetime.now(dt.UTC), options.window_length, options.lookback, options.settle)
    except ValueError as error:
        print(f"paysaga-reconcile: {error}", file=sys.stderr)
        return 2
    try:
        return run(options, args)
    except Exception as error:
        log.exception("reconcile.failed", extra={"alert": True})
        print(f"paysaga-reconcile: could not reconcile: {error!r}", file=sys.stderr)
        return EXIT_CODES[Verdict.INCOMPLETE]


def run(options: Options, args: argparse.Namespace) -> int:
    if options.window is not None and options.window.end > dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1):
        print("paysaga-reconcile: --until is in the future; a window must have ended", file=sys.stderr)
        return 2
    if args.at is not None:
        if options.window is not None:
            print("paysaga-reconcile: --at runs each night up to its own time; drop --until", file=sys.stderr)
            return 2
        return asyncio.run(run_daily(options, args.at, args.keep))
    return asyncio.run(run_once(options, dt.datetime.now(dt.UTC)))


if __name__ == "__main__":
    sys.exit(main())
