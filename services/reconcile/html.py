"""A run's report as one HTML page for the person on call: the verdict first, then what each source
held, the counts, two charts (by kind, by hour) and the mismatches, most urgent first.

The charts are inline SVG, readable with scripts off; the page's one script only adds a filter by
kind to the table. Every bar carries data-kind, data-count (and data-hour in the hourly chart), so
a test, or a person with the browser's inspector, can read the numbers behind it.
"""

from __future__ import annotations

import datetime as dt
import math

from paysaga.core.html import escape, page
from services.reconcile.domain import KIND_ORDER, KINDS, Kind, Mismatch, Verdict
from services.reconcile.report import Report

# A browser stays quick with a few thousand rows; the JSON report holds every one.
TABLE_ROWS_MAX = 2000
CHART_WIDTH_PX = 960

VERDICT_CLASS = {Verdict.RECONCILED: "ok", Verdict.MISMATCHES: "bad", Verdict.INCOMPLETE: "warn"}
# One colour per kind, in both charts; the reds and oranges go to the kinds where money may be wrong.
KIND_COLOURS = {
    Kind.UNBALANCED_ENTRY: "#d62728",
    Kind.DUPLICATE_EFFECT: "#ff7f0e",
    Kind.AMOUNT_DIFFERS: "#8c564b",
    Kind.OUTCOME_DISAGREES: "#e377c2",
    Kind.MISSING_IN_DATABASE: "#9467bd",
    Kind.SETTLEMENT_EXTRA: "#17becf",
    Kind.SETTLEMENT_DIFFERS: "#1f77b4",
    Kind.MISSING_IN_STREAM: "#bcbd22",
    Kind.ORPHAN_HOLD: "#2ca02c",
    Kind.STUCK_SAGA: "#7f7f7f",
    Kind.SETTLEMENT_MISSING: "#6baed6",
    Kind.DEAD_LETTER: "#393b79",
    Kind.ORPHAN_RESERVATION: "#98df8a",
}
assert set(KIND_COLOURS) == set(Kind), "every kind needs its colour"

# Filters the table by kind and says how many rows show; the rows carry their kind in data-kind.
FILTER_SCRIPT = """
(() => {
  const table = document.getElementById("mismatches");
  const filter = document.getElementById("kind-filter");
  const shown = document.getElementById("shown");
  const rows = Array.from(table.tBodies[0].rows);
  const total = Number(table.dataset.total);
  const apply = () => {
    let count = 0;
    for (const row of rows) {
      row.hidden = filter.value !== "" && row.dataset.kind !== filter.value;
      if (!row.hidden) count += 1;
    }
    shown.textContent = `showing ${count} of ${total} mismatches`;
  };
  filter.addEventListener("change", apply);
  document.getElementById("filter").hidden = false;
  apply();
})();
"""


def as_html(report: Report) -> str:
    verdict = report.verdict
    parts = [_header(report), _sources(report)]
    if report.incomplete:
        reasons = "".join(f"<li>{escape(reason)}</li>" for reason in report.incomplete)
        parts.append(f"<h2>Incomplete: nothing was judged, because</h2>\n<ul>{reasons}</ul>")
    else:
        parts.append(_counts(report))
        if report.mismatches:
            parts += ["<h2>Mismatches by kind</h2>", by_kind_chart(report), "<h2>Mismatches by hour</h2>"]
            parts += [by_hour_chart(report), _mismatches(report)]
        else:
            parts.append(
                '<p id="agrees"><strong>Every source agrees.</strong> No mismatches among the payments created '
                "in the window or its look-back.</p>"
            )
    title = f"paysaga reconciliation: {verdict.value} ({_time(report.window.end)})"
    return page(title, "\n".join(parts), FILTER_SCRIPT if report.mismatches and not report.incomplete else "")


def _time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _header(report: Report) -> str:
    verdict, window = report.verdict, report.window
    saying = {
        Verdict.RECONCILED: "reconciled: every source agrees",
        Verdict.MISMATCHES: f"{len(report.mismatches)} mismatches",
        Verdict.INCOMPLETE: "incomplete: a source could not be used, nothing was judged",
    }[verdict]
    facts = [
        ("window", f"{_time(window.start)} .. {_time(window.end)}"),
        ("look-back from", _time(window.lookback_start)),
        ("settle time", f"{int(window.settle.total_seconds())} s"),
        ("run id", report.run_id),
    ]
    listed = "".join(f"<dt>{escape(name)}</dt><dd class=mono>{escape(value)}</dd>" for name, value in facts)
    return (
        "<h1>paysaga reconciliation</h1>\n"
        f'<p><span class="verdict {VERDICT_CLASS[verdict]}" id="verdict" data-verdict="{verdict.value}">'
        f"{escape(verdict.value.upper())}</span> <span class=muted>{escape(saying)}</span></p>\n"
        f'<dl class="facts">{listed}</dl>'
    )


def _sources(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{escape(source.name)}</td><td>{escape(source.kind)}</td>"
        f"<td>{_status(source.status)}</td>"
        f'<td class="number">{source.records}</td><td>{escape(source.detail)}</td></tr>'
        for source in report.sources
    )
    head = '<tr><th>name</th><th>kind</th><th>status</th><th class="number">records</th><th>detail</th></tr>'
    return f'<h2>Sources</h2>\n<table id="sources"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def _status(status: str) -> str:
    shown = escape(status)
    return shown if status == "ok" else f'<span class="warn">{shown}</span>'


def _counts(report: Report) -> str:
    counts = report.counts
    if counts is None:
        return ""
    settlement = "no settlement file" if counts.settlement_lines is None else str(counts.settlement_lines)
    shown = [
        ("payments checked", str(counts.sagas)),
        ("created in the window", str(counts.in_window)),
        ("from the look-back", str(counts.in_lookback)),
        ("still in flight (judged next run)", str(counts.in_flight)),
        ("events", str(counts.events)),
        ("journal entries", str(counts.journal_entries)),
        ("dead letters", str(counts.dead_letters)),
        ("settlement lines", settlement),
        ("mismatches", str(len(report.mismatches))),
    ]
    rows = "".join(f'<tr><th>{escape(name)}</th><td class="number">{escape(value)}</td></tr>' for name, value in shown)
    return f'<h2>Counts</h2>\n<table id="counts"><tbody>{rows}</tbody></table>'


def _kinds_by_urgency(kinds: list[Kind]) -> list[Kind]:
    return sorted(kinds, key=lambda kind: (KINDS[kind].priority, KIND_ORDER[kind]))


def by_kind_chart(report: Report) -> str:
    """One horizontal bar per kind found, most urgent first, its length the count."""
    counted = {Kind(kind): count for kind, count in report.by_kind().items()}
    kinds = _kinds_by_urgency(list(counted))
    label_px, row_px, bar_px_max = 440, 40, CHART_WIDTH_PX - 440 - 60
    top = max(counted.values(), default=1)
    shapes = []
    for index, kind in enumerate(kinds):
        info, count, y = KINDS[kind], counted[kind], index * row_px + 8
        width = max(2.0, bar_px_max * count / top)
        tip = f"{kind.value}: {count} (P{info.priority} {info.mismatch_class.value}, {info.title})"
        shapes.append(
            f'<text x="0" y="{y + 11}" font-weight="600">{escape(kind.value)}</text>'
            f'<text x="0" y="{y + 26}" fill="#59636e">P{info.priority} {escape(info.mismatch_class.value)}: '
            f"{escape(info.title)}</text>"
            f'<rect x="{label_px}" y="{y + 2}" width="{width:.1f}" height="24" fill="{KIND_COLOURS[kind]}" '
            f'data-kind="{escape(kind.value)}" data-count="{count}"><title>{escape(tip)}</title></rect>'
            f'<text x="{label_px + width + 6:.1f}" y="{y + 19}">{count}</text>'
        )
    height = len(kinds) * row_px + 12
    return _svg("chart-by-kind", "mismatches by kind", height, "".join(shapes))


def _tick_step(top: int) -> int:
    """A round step (1, 2, 5, 10, 20, ...) that gives at most five ticks up to top."""
    magnitude = 1
    while True:
        for step in (magnitude, 2 * magnitude, 5 * magnitude):
            if top <= 5 * step:
                return step
        magnitude *= 10


def by_hour_chart(report: Report) -> str:
    """One stacked bar per hour that has mismatches, stacked by kind (most urgent at the bottom)."""
    hours = report.by_hour()
    left_px, top_px, plot_px, right_px = 48, 12, 240, 16
    slot_px = (CHART_WIDTH_PX - left_px - right_px) / max(len(hours), 1)
    bar_px = max(2.0, min(48.0, slot_px * 0.7))
    tallest = max((sum(kinds.values()) for kinds in hours.values()), default=1)
    step = _tick_step(tallest)
    ceiling = math.ceil(tallest / step) * step
    scale = plot_px / ceiling
    base = top_px + plot_px
    shapes = []
    for tick in range(0, ceiling + 1, step):
        y = base - tick * scale
        shapes.append(
            f'<line class="grid" x1="{left_px}" x2="{CHART_WIDTH_PX - right_px}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{left_px - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>'
        )
    # Rotated labels need about 12 px each; with more hours than that, every few hours is labelled.
    label_every = max(1, math.ceil(12 / slot_px))
    for index, (hour, kinds) in enumerate(hours.items()):
        x, y = left_px + index * slot_px + (slot_px - bar_px) / 2, float(base)
        for kind in _kinds_by_urgency([Kind(name) for name in kinds]):
            count = kinds[kind.value]
            height = count * scale
            y -= height
            tip = f"{_hour_label(hour)}: {count} {kind.value}"
            shapes.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_px:.1f}" height="{height:.1f}" '
                f'fill="{KIND_COLOURS[kind]}" data-kind="{escape(kind.value)}" data-hour="{escape(hour)}" '
                f'data-count="{count}"><title>{escape(tip)}</title></rect>'
            )
        if index % label_every == 0:
            label_x, label_y = x + bar_px / 2, base + 12
            shapes.append(
                f'<text x="{label_x:.1f}" y="{label_y}" text-anchor="end" font-size="10" '
                f'transform="rotate(-45 {label_x:.1f} {label_y})">{escape(_hour_label(hour))}</text>'
            )
    shapes.append(f'<line class="axis" x1="{left_px}" x2="{CHART_WIDTH_PX - right_px}" y1="{base}" y2="{base}"/>')
    legend_y = base + 90
    legend, rows = _legend(_kinds_by_urgency([Kind(name) for name in report.by_kind()]), left_px, legend_y)
    shapes.append(legend)
    return _svg("chart-by-hour", "mismatches by hour and kind", legend_y + rows * 20 + 4, "".join(shapes))


def _hour_label(hour: str) -> str:
    return f"{dt.datetime.fromisoformat(hour).astimezone(dt.UTC):%m-%d %H}:00"


def _legend(kinds: list[Kind], left_px: int, top_px: int) -> tuple[str, int]:
    """The kinds' colours, four to a row; the swatches carry no data-kind (they are not bars)."""
    per_row, column_px = 4, (CHART_WIDTH_PX - left_px) // 4
    items = []
    for index, kind in enumerate(kinds):
        x, y = left_px + (index % per_row) * column_px, top_px + (index // per_row) * 20
        items.append(
            f'<rect x="{x}" y="{y}" width="12" height="12" fill="{KIND_COLOURS[kind]}" data-legend="{kind.value}"/>'
            f'<text x="{x + 18}" y="{y + 11}">{escape(kind.value)}</text>'
        )
    return "".join(items), math.ceil(len(kinds) / per_row)


def _svg(identifier: str, label: str, height: float, shapes: str) -> str:
    return (
        f'<svg id="{identifier}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(label)}" '
        f'width="{CHART_WIDTH_PX}" height="{height:.0f}" viewBox="0 0 {CHART_WIDTH_PX} {height:.0f}">'
        f"{shapes}</svg>"
    )


def _mismatches(report: Report) -> str:
    ordered = sorted(report.mismatches, key=Mismatch.sort_key)
    total = len(ordered)
    options = "".join(
        f'<option value="{escape(kind)}">{escape(kind)} ({count})</option>'
        for kind, count in sorted(report.by_kind().items(), key=lambda item: KIND_ORDER[Kind(item[0])])
    )
    rows = "".join(_mismatch_row(mismatch) for mismatch in ordered[:TABLE_ROWS_MAX])
    head = "".join(f"<th>{name}</th>" for name in ("priority", "kind", "class", "payment id", "source", "at", "detail"))
    more = (
        f'<p id="more">{total - TABLE_ROWS_MAX} more mismatches are not shown here: see the JSON report.</p>'
        if total > TABLE_ROWS_MAX
        else ""
    )
    return (
        "<h2>Mismatches, most urgent first</h2>\n"
        '<p id="filter" hidden><label for="kind-filter">kind </label><select id="kind-filter">'
        f'<option value="">all kinds</option>{options}</select> <span id="shown" class="muted"></span></p>\n'
        f'<table id="mismatches" data-total="{total}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        f"\n{more}"
    )


def _mismatch_row(mismatch: Mismatch) -> str:
    info = mismatch.info
    at = escape(_time(mismatch.at)) + (" <span class=muted>(look-back)</span>" if mismatch.in_lookback else "")
    reference = f" <span class=muted>[{escape(mismatch.reference)}]</span>" if mismatch.reference else ""
    return (
        f'<tr data-kind="{escape(mismatch.kind.value)}"><td>P{info.priority}</td><td>{escape(mismatch.kind.value)}</td>'
        f"<td>{escape(info.mismatch_class.value)}</td><td class=id>{escape(mismatch.payment_id or '-')}</td>"
        f"<td>{escape(mismatch.source or '-')}</td><td class=mono>{at}</td>"
        f"<td>{escape(mismatch.detail)}{reference}</td></tr>"
    )
