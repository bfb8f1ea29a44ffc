"""The production profile's nightly reconciliation, checked for real.

Its scheduler runs in the "reconcile" container and has said when it runs next (at the time the
test gave it through PAYSAGA_RECONCILE_AT). Its PostgreSQL role reads every table of the three
databases it compares and can change none, nor reach auth's. And a run at once, as ops start one
(`docker compose exec reconcile paysaga-reconcile ...`), over every purchase the test made: it
exits 0, its report (read back from the reports volume) says "reconciled" with every payment
judged and none left in flight, and it announced the run on NATS as its own identity.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from pathlib import Path

from paysaga.ops.compose.checks import expect, json_lines
from paysaga.ops.compose.project import ComposeProject
from paysaga.payments.v1 import payments_pb2

SERVICE = "reconcile"
# A payment active this close to the run's end counts as in flight, unjudged: the test waits
# that long (and a second more) after the last sale settled, so that every payment is judged.
SETTLE_S = 5
REPORT_FILE = "/reports/compose-test.json"
RUN_TIMEOUT_S = 300.0
# The scheduled time the test gives: far enough ahead that it never comes during the test.
SCHEDULE_AHEAD = dt.timedelta(hours=12)
DATABASE_PROBE = Path(__file__).with_name("database_probe.py")
READ_DATABASES = ("payments", "ledger", "inventory")


def schedule_time(now: dt.datetime) -> str:
    """The PAYSAGA_RECONCILE_AT the test gives its cluster: HH:MM (UTC), SCHEDULE_AHEAD from now."""
    return f"{(now.astimezone(dt.UTC) + SCHEDULE_AHEAD):%H:%M}"


def check_scheduler(project: ComposeProject, at: str) -> str:
    """The scheduler's container runs, has never restarted, and logged its next run at `at` (UTC)."""
    containers = project.inspect(SERVICE)
    expect(len(containers) == 1, f"{SERVICE}: {len(containers)} containers, expected one")
    [container] = containers
    state = container["State"]
    expect(state["Running"], f"{SERVICE} is not running: {state}")
    expect(container["RestartCount"] == 0, f"{SERVICE} has restarted {container['RestartCount']} times")
    logged = json_lines(project.container_logs(container["Id"]))
    runs = [record for record in logged if record.get("event") == "reconcile.next_run"]
    expect(bool(runs), f"{SERVICE} has not logged reconcile.next_run")
    due = dt.datetime.fromisoformat(str(runs[-1]["at"]))
    ahead = due - dt.datetime.now(dt.UTC)
    expect(
        f"{due.astimezone(dt.UTC):%H:%M}" == at and dt.timedelta(0) < ahead <= dt.timedelta(days=1),
        f"{SERVICE} logged its next run at {due.isoformat()}, expected the next {at} UTC",
    )
    return f"{SERVICE}: the scheduler runs (never restarted); its log: reconcile.next_run at {due.isoformat()}"


def check_database_role(project: ComposeProject) -> str:
    """Inside the reconcile container, as its role: every table of the databases it compares can
    be read; a DELETE is refused in a plain transaction (read-only by default) and in one made
    READ WRITE (no grant allows it); auth's database refuses the connection."""
    output = project.call("exec", "-T", SERVICE, "python", "-", input_text=DATABASE_PROBE.read_text())
    results = json.loads(output.strip().splitlines()[-1])
    tables = 0
    for database in READ_DATABASES:
        found = results[database]
        reads: dict[str, str] = found["tables"]
        expect(bool(reads), f"the role reconcile sees no tables in {database}: {found}")
        expect(all(answer == "ok" for answer in reads.values()), f"reconcile cannot read all of {database}: {reads}")
        by_default, read_write = found["write_default"], found["write_read_write"]
        expect("read-only transaction" in by_default, f"{database}: a DELETE by reconcile gave {by_default!r}")
        expect("permission denied" in read_write, f"{database}: a DELETE by reconcile, READ WRITE, gave {read_write!r}")
        tables += len(reads)
    expect("pg_hba.conf" in results["auth"], f"auth's database, connected to as reconcile: {results['auth']!r}")
    return (
        f"role reconcile (TLS, its certificate): reads all {tables} tables of {', '.join(READ_DATABASES)}; "
        f"a DELETE is refused ({_reason(by_default)}; made READ WRITE: {_reason(read_write)}); "
        f"auth's database refuses it ({_reason(results['auth'])})"
    )


def _reason(refusal: str) -> str:
    """What the server said, without the probe's prefix and the driver's exception class."""
    return refusal.removeprefix("refused: ").rpartition(">: ")[2]


def check_run(project: ComposeProject, payments: Sequence[payments_pb2.Payment], settled_at: float) -> list[str]:
    """A run now, inside the reconcile container, over every payment the test made (all ended,
    their sales committed at the monotonic time settled_at): exit 0, and a report that judged
    every one of them and found every source in agreement."""
    time.sleep(max(0.0, settled_at + SETTLE_S + 1 - time.monotonic()))
    command = ("paysaga-reconcile", "--until", "now", "--settle-s", str(SETTLE_S), "--json", REPORT_FILE)
    started = time.monotonic()
    result = project.attempt("exec", "-T", SERVICE, *command, timeout_s=RUN_TIMEOUT_S)
    took_s = time.monotonic() - started
    expect(
        result.returncode == 0,
        f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr.strip()[-3000:]}",
    )
    report = json.loads(project.call("exec", "-T", SERVICE, "cat", REPORT_FILE))
    counts = report["counts"]
    expect(report["verdict"] == "reconciled", f"the report's verdict is {report['verdict']!r}:\n{result.stdout}")
    expected = {"sagas": len(payments), "in_window": len(payments), "in_flight": 0, "mismatches": 0}
    expect(
        {key: counts[key] for key in expected} == expected,
        f"expected all {len(payments)} payments judged in the window, none in flight or mismatched: {counts}",
    )
    sources = {source["name"]: source for source in report["sources"]}
    unread = [name for name, source in sources.items() if source["status"] != "ok" and source["kind"] != "settlement"]
    expect(not unread, f"sources not read: {unread}")
    logged = json_lines(result.stderr)
    published = [record for record in logged if record.get("event") == "reconcile.published"]
    expect(bool(published), f"the run did not announce itself on NATS:\n{result.stderr.strip()[-3000:]}")
    databases = "; ".join(
        f"{name}: {source['detail']}" for name, source in sources.items() if source["kind"] == "database"
    )
    events = sum(source["records"] for source in sources.values() if source["kind"] == "stream")
    return [
        f"ops: docker compose exec reconcile {' '.join(command)}: exit 0 in {took_s:.1f} s",
        f"{REPORT_FILE}: verdict {report['verdict']}, {counts['sagas']} payments judged (all the test made; "
        f"{counts['in_flight']} in flight), {counts['mismatches']} mismatches; {events} events from "
        f"{sum(source['kind'] == 'stream' for source in sources.values())} streams, {counts['journal_entries']} "
        f"journal entries, {counts['dead_letters']} dead letters",
        f"{databases}; events announced on NATS: {published[-1].get('events')}",
    ]
