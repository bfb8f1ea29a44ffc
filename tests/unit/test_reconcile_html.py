"""The reconciliation report as an HTML page: the verdict, every kind, the numbers behind each bar,
and nothing from the records that a browser would take for markup."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections import Counter

import pytest

from paysaga.core import html
from services.reconcile import html as report_html
from services.reconcile.compare import Counts
from services.reconcile.domain import KINDS, Kind, Mismatch, Window
from services.reconcile.report import Report, SourceState
from tests.html_dom import Dom

END = dt.datetime(2025, 3, 2, tzinfo=dt.UTC)
SOURCES = [
    SourceState("payments database", "database", "ok", 120, "120 payments"),
    SourceState("LEDGER stream", "stream", "ok", 480, "480 events"),
    SourceState("settlement file", "settlement", "not_given", 0, "no file given"),
]
COUNTS = Counts(
    sagas=120,
    in_window=100,
    in_lookback=20,
    in_flight=3,
    events=480,
    journal_entries=240,
    dead_letters=2,
    settlement_lines=None,
)
# (kind, hour of the window's day, how many): several kinds, some sharing an hour.
PLANTED = [
    (Kind.STUCK_SAGA, 3, 2),
    (Kind.UNBALANCED_ENTRY, 3, 1),
    (Kind.DEAD_LETTER, 7, 4),
    (Kind.UNBALANCED_ENTRY, 7, 2),
    (Kind.ORPHAN_RESERVATION, 22, 3),
]


def planted_mismatches() -> list[Mismatch]:
    found = []
    for kind, hour, count in PLANTED:
        for index in range(count):
            at = END - dt.timedelta(hours=24 - hour) + dt.timedelta(minutes=5 * index)
            found.append(Mismatch(kind, f"pay-{kind.value}-{hour}-{index}", "ledger", at, f"{kind.value} #{index}"))
    return found


def report_of(mismatches: list[Mismatch], incomplete: tuple[str, ...] = ()) -> Report:
    counts = None if incomplete else COUNTS
    return Report(Window(end=END), SOURCES, list(incomplete), counts, mismatches)


def test_a_report_with_mismatches_shows_the_verdict_in_red_with_the_window_and_run_id() -> None:
    report = report_of(planted_mismatches())
    page = Dom(report_html.as_html(report))

    verdict = next(attributes for tag, attributes in page.elements if attributes.get("id") == "verdict")
    assert page.text["verdict"] == "MISMATCHES" and "bad" in verdict["class"].split()
    shown = report_html.as_html(report)
    for fact in (report.run_id, "2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z", "2025-02-27T00:00:00Z"):
        assert fact in shown
    assert all(source.name in page.text["sources"] for source in SOURCES)
    assert "no settlement file" in page.text["counts"]


def test_the_kind_chart_has_a_bar_per_kind_with_its_count_title_priority_and_class() -> None:
    page = Dom(report_html.as_html(report_of(planted_mismatches())))

    expected: Counter[str] = Counter()
    for kind, _, count in PLANTED:
        expected[kind.value] += count
    bars = [rect for rect in page.all("rect", "data-kind") if "data-hour" not in rect]
    assert {bar["data-kind"]: int(bar["data-count"]) for bar in bars} == expected
    for kind in {kind for kind, _, _ in PLANTED}:
        info = KINDS[kind]
        assert f"P{info.priority} {info.mismatch_class.value}: {info.title}" in page.text["chart-by-kind"]
    # Most urgent first: P1 before P2 before P3.
    assert [bar["data-kind"] for bar in bars] == ["unbalanced_entry", "stuck_saga", "dead_letter", "orphan_reservation"]


def test_the_hourly_chart_has_a_rect_per_hour_and_kind_with_its_count_and_one_colour_per_kind() -> None:
    page = Dom(report_html.as_html(report_of(planted_mismatches())))

    bars = page.all("rect", "data-hour")
    found = {(bar["data-hour"][11:13], bar["data-kind"]): int(bar["data-count"]) for bar in bars}
    assert found == {(f"{hour:02d}", kind.value): count for kind, hour, count in PLANTED}
    assert sum(found.values()) == len(planted_mismatches())
    colours = {(bar["data-kind"], bar["fill"]) for bar in page.all("rect", "data-kind")}
    assert len(colours) == len({kind for kind, _ in colours}), "one colour per kind in both charts"
    assert {label for label in ("03-01 03:00", "03-01 07:00", "03-01 22:00")} <= set(
        re.findall(r"\d\d-\d\d \d\d:00", page.text["chart-by-hour"])
    )
    assert all(bar["data-hour"] and bar.get("height") for bar in bars)


def test_the_mismatch_table_is_most_urgent_first_with_a_filter_for_each_kind_present() -> None:
    mismatches = planted_mismatches()
    page = Dom(report_html.as_html(report_of(list(reversed(mismatches)))))

    rows = [attributes["data-kind"] for tag, attributes in page.elements if tag == "tr" and "data-kind" in attributes]
    assert len(rows) == len(mismatches)
    priorities = [KINDS[Kind(kind)].priority for kind in rows]
    assert priorities == sorted(priorities)
    options = [attributes["value"] for tag, attributes in page.elements if tag == "option"]
    assert sorted(options) == sorted(["", *{kind.value for kind, _, _ in PLANTED}])
    assert page.text["shown"] == "", "written by the page's script, not by the server"


def test_data_from_the_records_is_escaped_everywhere() -> None:
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    mismatch = Mismatch(Kind.DEAD_LETTER, 'pay-"quoted"', "<b>ledger</b>", END - dt.timedelta(hours=1), hostile, "ref<")
    source = SourceState("<i>db</i>", "database", "ok", 1, hostile)
    report = Report(Window(end=END), [source], [], COUNTS, [mismatch])

    shown = report_html.as_html(report)

    assert "<script>alert" not in shown and "<img" not in shown and "<b>ledger" not in shown and "<i>db" not in shown
    assert shown.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;") == 2
    assert shown.count("<script>") == 1, "only the page's own script"
    assert Dom(shown).text["mismatches"].count(hostile) == 1, "a person still reads the detail as it was"


def test_the_pages_policy_lets_only_its_own_script_run_and_loads_nothing() -> None:
    shown = report_html.as_html(report_of(planted_mismatches()))

    script = shown.split("<script>", 1)[1].split("</script>", 1)[0]
    policy = next(
        attributes["content"]
        for tag, attributes in Dom(shown).elements
        if tag == "meta" and attributes.get("http-equiv") == "Content-Security-Policy"
    )
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", shown), "no external resources"
    with pytest.raises(ValueError, match="</script"):
        html.page("t", "", "let x = '</SCRIPT>';")


def test_a_reconciled_report_says_plainly_that_every_source_agrees() -> None:
    shown = report_html.as_html(report_of([]))
    page = Dom(shown)

    assert page.text["verdict"] == "RECONCILED"
    assert "ok" in next(attributes["class"] for _, attributes in page.elements if attributes.get("id") == "verdict")
    assert "Every source agrees" in shown
    assert "<svg" not in shown and "<script" not in shown and "script-src 'none'" in shown
    assert "120" in page.text["counts"]


def test_an_incomplete_report_lists_why_and_judges_nothing() -> None:
    reasons = ("the LEDGER stream was unavailable: <timeout>", "the payments database does not cover the window")
    shown = report_html.as_html(report_of([], incomplete=reasons))
    page = Dom(shown)

    assert page.text["verdict"] == "INCOMPLETE"
    assert "warn" in next(attributes["class"] for _, attributes in page.elements if attributes.get("id") == "verdict")
    assert "the LEDGER stream was unavailable: &lt;timeout&gt;" in shown
    assert reasons[1] in shown
    assert "<svg" not in shown and 'id="mismatches"' not in shown and "Every source agrees" not in shown


def test_the_table_stops_at_its_cap_and_says_how_many_more_are_in_the_json() -> None:
    extra = 7
    at = END - dt.timedelta(hours=2)
    many = [
        Mismatch(Kind.STUCK_SAGA, f"pay-{index:05d}", "payments", at, "stuck")
        for index in range(report_html.TABLE_ROWS_MAX + extra)
    ]
    page = Dom(report_html.as_html(report_of(many)))

    rows = [attributes for tag, attributes in page.elements if tag == "tr" and "data-kind" in attributes]
    assert len(rows) == report_html.TABLE_ROWS_MAX
    assert f"{extra} more mismatches" in page.text["more"] and "JSON" in page.text["more"]
    table = next(attributes for tag, attributes in page.elements if attributes.get("id") == "mismatches")
    assert table["data-total"] == str(len(many))
