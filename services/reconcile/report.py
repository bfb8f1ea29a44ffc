"""A run's result: the verdict, what each source held, the counts and every mismatch; as JSON
(stable fields, byte for byte the same on a rerun over the same data) and as text for a terminal.

The JSON (``"format": "paysaga-reconciliation/1"``) holds no time of the run itself, no durations
and no host: only what follows from the window and the data. Its fields are documented in the
README ("Reconciliation report").
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from services.reconcile.compare import Counts
from services.reconcile.domain import KINDS, Kind, Mismatch, Verdict, Window

FORMAT = "paysaga-reconciliation/1"
RUN_NAMESPACE = uuid.UUID("4f1b0c8e-7f3a-5d2e-9a41-6c0d2b9e8a17")
TEXT_MISMATCHES_MAX = 200


@dataclass(frozen=True)
class SourceState:
    """What one source held for the run, or why it could not be used."""

    name: str
    kind: str  # database, stream, dead_letters or settlement
    status: str  # ok, unavailable, incomplete or not_given
    records: int
    detail: str


@dataclass(frozen=True)
class Report:
    window: Window
    sources: Sequence[SourceState]
    # Why the run could not judge (a source unreachable or not covering the window); empty otherwise.
    incomplete: Sequence[str]
    counts: Counts | None
    mismatches: Sequence[Mismatch]

    @property
    def verdict(self) -> Verdict:
        if self.incomplete:
            return Verdict.INCOMPLETE
        return Verdict.MISMATCHES if self.mismatches else Verdict.RECONCILED

    @property
    def run_id(self) -> str:
        """The same for a rerun over the same window: the events it publishes are deduplicated."""
        return str(
            uuid.uuid5(RUN_NAMESPACE, f"{self.window.end.isoformat()}|{self.window.length}|{self.window.lookback}")
        )

    def by_kind(self) -> dict[str, int]:
        counted = Counter(mismatch.kind for mismatch in self.mismatches)
        return {kind.value: counted[kind] for kind in Kind if counted[kind]}

    def by_hour(self) -> dict[str, dict[str, int]]:
        """Mismatches per hour (of the payment's creation, or the entry's, event's or line's) and kind."""
        hours: dict[str, Counter[str]] = {}
        for mismatch in self.mismatches:
            hour = mismatch.at.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0).isoformat()
            hours.setdefault(hour, Counter())[mismatch.kind] += 1
        return {
            hour: {kind.value: counted[kind] for kind in Kind if counted[kind]}
            for hour, counted in sorted(hours.items())
        }


def _time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def as_dict(report: Report) -> dict[str, object]:
    window = report.window
    return {
        "format": FORMAT,
        "run_id": report.run_id,
        "verdict": report.verdict.value,
        "window": {
            "start": _time(window.start),
            "end": _time(window.end),
            "lookback_start": _time(window.lookback_start),
            "settle_s": int(window.settle.total_seconds()),
        },
        "sources": [asdict(source) for source in report.sources],
        "incomplete": list(report.incomplete),
        "counts": None
        if report.counts is None
        else {**asdict(report.counts), "mismatches": len(report.mismatches), "by_kind": report.by_kind()},
        "by_hour": report.by_hour(),
        "mismatches": [
            {
                "id": mismatch.mismatch_id,
                "kind": mismatch.kind.value,
                "class": mismatch.info.mismatch_class.value,
                "priority": mismatch.info.priority,
                "payment_id": mismatch.payment_id,
                "source": mismatch.source,
                "at": _time(mismatch.at),
                "in_lookback": mismatch.in_lookback,
                "reference": mismatch.reference,
                "detail": mismatch.detail,
            }
            for mismatch in report.mismatches
        ],
    }


def as_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2, ensure_ascii=False) + "\n"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def as_text(report: Report) -> str:
    window = report.window
    lines = [
        f"paysaga reconciliation {report.run_id}",
        f"  window    {_time(window.start)} .. {_time(window.end)}  (look-back from {_time(window.lookback_start)})",
        f"  verdict   {report.verdict.value.upper()}",
        "",
        "sources",
    ]
    for source in report.sources:
        lines.append(f"  {source.status:<11} {source.name:<28} {source.detail}")
    if report.incomplete:
        lines += ["", "incomplete: nothing was judged, because"]
        lines += [f"  - {reason}" for reason in report.incomplete]
        return "\n".join(lines) + "\n"
    counts = report.counts
    assert counts is not None
    settlement = (
        "no settlement file" if counts.settlement_lines is None else f"{counts.settlement_lines} settlement lines"
    )
    lines += [
        "",
        f"checked   {counts.sagas} payments ({counts.in_window} in the window, "
        f"{counts.in_lookback} from the look-back, {counts.in_flight} still in flight), "
        f"{counts.events} events, {counts.journal_entries} journal entries, "
        f"{counts.dead_letters} dead letters, {settlement}",
    ]
    if not report.mismatches:
        lines.append("reconciled: every source agrees")
        return "\n".join(lines) + "\n"
    lines += ["", f"{len(report.mismatches)} mismatches", f"  {'priority':<9} {'class':<13} {'kind':<20} count  what"]
    for kind, count in sorted(report.by_kind().items(), key=lambda item: (KINDS[Kind(item[0])].priority, item[0])):
        info = KINDS[Kind(kind)]
        lines.append(f"  P{info.priority:<8} {info.mismatch_class.value:<13} {kind:<20} {count:>5}  {info.title}")
    lines += ["", "details (most urgent first)"]
    for mismatch in report.mismatches[:TEXT_MISMATCHES_MAX]:
        where = f" [{mismatch.source}]" if mismatch.source else ""
        lookback = " (look-back)" if mismatch.in_lookback else ""
        lines.append(
            f"  P{mismatch.info.priority} {mismatch.kind.value:<20} {mismatch.payment_id or '-':<36}{where}{lookback}"
        )
        lines.append(f"       {mismatch.detail}")
    if len(report.mismatches) > TEXT_MISMATCHES_MAX:
        lines.append(f"  ... and {len(report.mismatches) - TEXT_MISMATCHES_MAX} more: see the JSON or HTML report")
    return "\n".join(lines) + "\n"
