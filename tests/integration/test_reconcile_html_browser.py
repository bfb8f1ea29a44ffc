"""The HTML pages as a browser shows them: headless Chromium opens the file, runs what the page's
policy lets it run, and hands back the resulting DOM (and a screenshot). What is checked is that
DOM: the verdict, the line the page's own script writes, the bars' numbers, the trace's dots."""

from __future__ import annotations

import datetime as dt
import struct
import subprocess
from pathlib import Path

from paysaga.ops.client import trace
from paysaga.ops.client.trace import Step
from services.reconcile import html as report_html
from services.reconcile.compare import Counts
from services.reconcile.domain import Kind, Mismatch, Window
from services.reconcile.report import Report, SourceState
from tests.html_dom import Dom

BROWSER_TIMEOUT_S = 60
# A blank 1280 x 2000 page compresses to a few kilobytes; charts, tables and text take far more.
SCREENSHOT_BYTES_MIN = 20_000
END = dt.datetime(2025, 3, 2, tzinfo=dt.UTC)
# (kind, hours before the window's end, how many)
PLANTED = [
    (Kind.AMOUNT_DIFFERS, 20, 2),
    (Kind.STUCK_SAGA, 20, 3),
    (Kind.STUCK_SAGA, 13, 1),
    (Kind.DEAD_LETTER, 13, 5),
    (Kind.SETTLEMENT_MISSING, 6, 2),
    (Kind.ORPHAN_RESERVATION, 2, 4),
]


def browse(chromium: str, page: Path, *flags: str) -> str:
    """What headless Chromium makes of the page, with its own profile so runs never share state."""
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={page.parent / 'profile'}",
        *flags,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered(chromium: str, page: Path) -> Dom:
    return Dom(browse(chromium, page, "--dump-dom"))


def screenshot(chromium: str, page: Path) -> bytes:
    png = page.with_suffix(".png")
    browse(chromium, page, f"--screenshot={png}", "--window-size=1280,2000")
    assert png.exists(), "the browser wrote no screenshot"
    shot = png.read_bytes()
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > SCREENSHOT_BYTES_MIN, len(shot)
    assert struct.unpack(">II", shot[16:24]) == (1280, 2000), "the image header's width and height"
    return shot


def planted_report() -> Report:
    mismatches = [
        Mismatch(
            kind,
            f"pay-{kind.value}-{hours}-{index}",
            "payments",
            END - dt.timedelta(hours=hours) + dt.timedelta(minutes=7 * index),
            f"{kind.value} <b>#{index}</b>",
        )
        for kind, hours, count in PLANTED
        for index in range(count)
    ]
    sources = [
        SourceState("payments database", "database", "ok", 40, "40 payments"),
        SourceState("PAYMENTS stream", "stream", "ok", 160, "160 events"),
    ]
    counts = Counts(40, 35, 5, 1, 160, 80, 5, None)
    return Report(Window(end=END), sources, [], counts, mismatches)


def test_the_browser_shows_the_verdict_the_scripts_count_and_bars_that_add_up(chromium: str, tmp_path: Path) -> None:
    report = planted_report()
    page = tmp_path / "report.html"
    page.write_text(report_html.as_html(report), encoding="utf-8")

    dom = rendered(chromium, page)

    total = sum(count for _, _, count in PLANTED)
    assert dom.text["verdict"].strip() == "MISMATCHES"
    assert dom.text["shown"] == f"showing {total} of {total} mismatches", "the page's script ran"
    hourly = dom.all("rect", "data-hour")
    assert len(hourly) == len(PLANTED) and all(bar.get("data-kind") for bar in hourly)
    assert sum(int(bar["data-count"]) for bar in hourly) == total
    assert len({bar["data-hour"] for bar in hourly}) == len({hours for _, hours, _ in PLANTED})
    by_kind = [bar for bar in dom.all("rect", "data-kind") if "data-hour" not in bar]
    assert sum(int(bar["data-count"]) for bar in by_kind) == total
    assert {bar["data-kind"] for bar in by_kind} == {kind.value for kind, _, _ in PLANTED}
    rows = [attributes for tag, attributes in dom.elements if tag == "tr" and "data-kind" in attributes]
    assert len(rows) == total and not any("hidden" in row for row in rows)
    assert "<b>#0</b>" in dom.text["mismatches"] and not dom.all("b", ""), "details shown as text, not markup"
    screenshot(chromium, page)


def test_a_script_that_is_not_the_one_hashed_does_not_run(chromium: str, tmp_path: Path) -> None:
    # The check above means something only if the policy really blocks other scripts.
    page = tmp_path / "tampered.html"
    shown = report_html.as_html(planted_report())
    page.write_text(shown.replace("textContent = `showing", "textContent = `SHOWING", 1), encoding="utf-8")

    dom = rendered(chromium, page)

    assert dom.text["verdict"].strip() == "MISMATCHES"
    assert dom.text["shown"] == ""


def test_the_browser_shows_a_reconciled_report_as_reconciled(chromium: str, tmp_path: Path) -> None:
    report = planted_report()
    page = tmp_path / "reconciled.html"
    page.write_text(report_html.as_html(Report(report.window, report.sources, [], report.counts, [])), "utf-8")

    dom = rendered(chromium, page)

    assert dom.text["verdict"].strip() == "RECONCILED"
    assert not dom.all("rect", "data-kind") and "shown" not in dom.text


def test_the_browser_shows_a_trace_with_a_dot_per_event_on_its_services_row(chromium: str, tmp_path: Path) -> None:
    start = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
    timeline = [
        Step(start, "payments", "PaymentRequested", "standard", 0.0, None, "1250 EUR"),
        Step(start + dt.timedelta(milliseconds=40), "ledger", "FundsHeld", "standard", 40.0, 40.0, "1250 EUR"),
        Step(start + dt.timedelta(milliseconds=55), "inventory", "StockReserved", "standard", 15.0, 55.0, "sku mug"),
        Step(start + dt.timedelta(milliseconds=90), "ledger", "FundsCaptured", "standard", 35.0, 35.0, ""),
        Step(start + dt.timedelta(milliseconds=130), "payments", "PaymentCompleted", "standard", 40.0, 40.0, "<ok>"),
    ]
    page = tmp_path / "trace.html"
    page.write_text(trace.as_html("pay-123", "COMPLETED", timeline), encoding="utf-8")

    dom = rendered(chromium, page)

    dots = dom.all("circle", "data-event")
    assert [dot["data-event"] for dot in dots] == [step.event_type for step in timeline]
    assert [dot["data-producer"] for dot in dots] == [step.producer for step in timeline]
    assert [int(dot["data-ms"]) for dot in dots] == [0, 40, 55, 90, 130]
    xs = [float(dot["cx"]) for dot in dots]
    assert xs == sorted(xs) and xs[0] < xs[-1], "placed by time since the first event"
    rows = {dot["data-producer"]: dot["cy"] for dot in dots}
    assert len(set(rows.values())) == 3, "one row per service"
    assert all(step.event_type in dom.text["timeline"] for step in timeline), "each dot labelled"
    assert dom.text["steps"].count("ms") >= len(timeline) and "<ok>" in dom.text["steps"]
    screenshot(chromium, page)
