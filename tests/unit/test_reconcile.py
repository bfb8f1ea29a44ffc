"""The reconciliation's checks on hand-made records and events: every way a purchase ends is
reconciled, and each fault, planted in one source, is found as its own kind and nowhere else."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from paysaga.core.reconciliation import EntryRecord, HoldRecord, PaymentRecord, ReservationRecord
from services.reconcile import report as reports
from services.reconcile import settlement
from services.reconcile.compare import reconcile
from services.reconcile.domain import Kind, Mismatch, Verdict, Window
from services.reconcile.observations import DeadLetter, EventFact, Observations, SettlementLine
from services.reconcile.schedule import keep_newest, next_run, parse_daily_time

END = dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC)
WINDOW = Window(END)
PRICE = 1250
STREAMS = {"payments": "PAYMENTS_EVENTS", "ledger": "LEDGER_EVENTS", "inventory": "INVENTORY_EVENTS"}
PRODUCERS = {
    "Payment": "payments",
    "Funds": "ledger",
    "Stock": "inventory",
}
# Each way a purchase ends: its events in order, and where each service's records end.
ENDINGS: dict[str, tuple[tuple[str, ...], str, str | None, str | None]] = {
    "completed": (
        ("PaymentRequested", "FundsHeld", "StockReserved", "FundsCaptured", "StockCommitted", "PaymentCompleted"),
        "COMPLETED",
        "CAPTURED",
        "COMMITTED",
    ),
    "refunded": (
        (
            *("PaymentRequested", "FundsHeld", "StockReserved", "FundsCaptured", "StockCommitted", "PaymentCompleted"),
            *("PaymentRefundRequested", "FundsRefunded", "StockRestocked", "PaymentRefunded"),
        ),
        "REFUNDED",
        "REFUNDED",
        "RESTOCKED",
    ),
    "no funds": (("PaymentRequested", "FundsHoldFailed", "PaymentFailed"), "FAILED", None, None),
    "no stock": (
        ("PaymentRequested", "FundsHeld", "StockReservationFailed", "FundsReleased", "PaymentFailed"),
        "FAILED",
        "RELEASED",
        "CANCELLED",
    ),
    "cancelled after capture": (
        (
            *("PaymentRequested", "FundsHeld", "StockReserved", "FundsCaptured", "PaymentCancellationRequested"),
            *("FundsRefunded", "StockRestocked", "PaymentCancelled"),
        ),
        "CANCELLED",
        "REFUNDED",
        "RESTOCKED",
    ),
    "rejected": (("PaymentRejected",), "REJECTED", None, None),
}


class Books:
    """Records and events of purchases, as the services would write them."""

    def __init__(self) -> None:
        self.payments: list[PaymentRecord] = []
        self.holds: list[HoldRecord] = []
        self.reservations: list[ReservationRecord] = []
        self.entries: list[EntryRecord] = []
        self.events: list[EventFact] = []
        self.settled: list[SettlementLine] = []
        self.sequences = dict.fromkeys(STREAMS.values(), 0)

    def purchase(self, ending: str, at: dt.datetime = END - dt.timedelta(hours=3)) -> str:
        payment_id = str(uuid.uuid4())
        event_types, status, hold, reservation = ENDINGS[ending]
        moments = [at + dt.timedelta(milliseconds=50 * index) for index in range(len(event_types) + 1)]
        last = moments[-1]
        for event_type, moment in zip(event_types, moments, strict=False):
            self.event(payment_id, event_type, moment)
        self.payments.append(
            PaymentRecord(payment_id, status, PRICE, "EUR", "sku-1", 1, at, last, at + dt.timedelta(seconds=30))
        )
        if hold is not None:
            self.holds.append(HoldRecord(payment_id, str(uuid.uuid4()), hold, PRICE, "EUR", last))
        if reservation is not None:
            sku, quantity = ("", 0) if reservation == "CANCELLED" else ("sku-1", 1)
            self.reservations.append(ReservationRecord(payment_id, str(uuid.uuid4()), reservation, sku, quantity, last))
        for kind, event_type in (("CAPTURE", "FundsCaptured"), ("REFUND", "FundsRefunded")):
            if event_type in event_types:
                self.entries.append(EntryRecord(str(uuid.uuid4()), kind, payment_id, last, (("EUR", 0),), PRICE, "EUR"))
                self.settled.append(SettlementLine(0, payment_id, kind.lower(), PRICE, "EUR", last.date()))
        return payment_id

    def event(self, payment_id: str, event_type: str, at: dt.datetime, **fields: object) -> EventFact:
        producer = next(name for prefix, name in PRODUCERS.items() if event_type.startswith(prefix))
        stream = STREAMS[producer]
        self.sequences[stream] += 1
        money: dict[str, object] = {"amount_minor": PRICE, "currency": "EUR"}
        carries: dict[str, object] = {
            "PaymentRequested": {**money, "sku": "sku-1", "quantity": 1},
            "PaymentRejected": money,
            "FundsHeld": {**money, "sku": "sku-1", "quantity": 1, "hold_id": "h"},
            "FundsCaptured": {**money, "hold_id": "h"},
            "FundsRefunded": money,
            "FundsReleased": {"hold_id": "h"},
            "StockReserved": {"sku": "sku-1", "quantity": 1},
            "StockRestocked": {"sku": "sku-1", "quantity": 1},
        }.get(event_type, {})  # type: ignore[assignment]
        fact = EventFact(
            stream,
            self.sequences[stream],
            str(uuid.uuid4()),
            event_type,
            producer,
            payment_id,
            at,
            **(carries | fields),  # type: ignore[arg-type]
        )
        self.events.append(fact)
        return fact

    def observations(self, **changes: object) -> Observations:
        observed = Observations(
            WINDOW,
            payments=self.payments,
            holds=self.holds,
            reservations=self.reservations,
            entries=self.entries,
            events=self.events,
            settlement=self.settled,
        )
        return dataclasses.replace(observed, **changes)  # type: ignore[arg-type]


def replace(records: list, payment_id: str, **changes: object) -> None:  # type: ignore[type-arg]
    index = next(
        i
        for i, record in enumerate(records)
        if getattr(record, "payment_id", getattr(record, "saga_id", "")) == payment_id
    )
    records[index] = dataclasses.replace(records[index], **changes)


def found(observed: Observations) -> set[tuple[Kind, str]]:
    mismatches, _ = reconcile(observed)
    return {(mismatch.kind, mismatch.payment_id) for mismatch in mismatches}


def every_ending() -> tuple[Books, dict[str, str]]:
    books = Books()
    return books, {ending: books.purchase(ending) for ending in ENDINGS}


def test_every_way_a_purchase_ends_is_reconciled() -> None:
    books, _ = every_ending()
    mismatches, counts = reconcile(books.observations())
    assert mismatches == []
    assert counts.sagas == len(ENDINGS) and counts.in_flight == 0 and counts.settlement_lines == 5


Plant = Callable[[Books, dict[str, str]], None]


def _ended_failed_but_captured(books: Books, ids: dict[str, str]) -> None:
    replace(books.payments, ids["completed"], status="FAILED")


def _hold_amount(books: Books, ids: dict[str, str]) -> None:
    replace(books.holds, ids["completed"], amount_minor=PRICE + 1)


def _lost_reservation(books: Books, ids: dict[str, str]) -> None:
    books.reservations = [record for record in books.reservations if record.payment_id != ids["completed"]]


def _capture_not_announced(books: Books, ids: dict[str, str]) -> None:
    books.events = [e for e in books.events if not (e.saga_id == ids["completed"] and e.event_type == "FundsCaptured")]


def _second_capture_event(books: Books, ids: dict[str, str]) -> None:
    books.event(ids["completed"], "FundsCaptured", END - dt.timedelta(hours=1))


def _second_refund_entry(books: Books, ids: dict[str, str]) -> None:
    books.entries.append(
        EntryRecord("e2", "REFUND", ids["refunded"], END - dt.timedelta(hours=1), (("EUR", 0),), PRICE, "EUR")
    )


def _unbalanced(books: Books, ids: dict[str, str]) -> None:
    replace(books.entries, ids["completed"], sums_minor=(("EUR", 5),))


def _hold_never_released(books: Books, ids: dict[str, str]) -> None:
    replace(books.holds, ids["no stock"], status="HELD")


def _reservation_never_released(books: Books, ids: dict[str, str]) -> None:
    replace(books.reservations, ids["cancelled after capture"], status="RESERVED")


def _stuck(books: Books, ids: dict[str, str]) -> None:
    replace(books.payments, ids["no funds"], status="FUNDS_HELD")


PLANTED: dict[str, tuple[Plant, Kind, str]] = {
    "payments says failed, the others sold": (_ended_failed_but_captured, Kind.OUTCOME_DISAGREES, "completed"),
    "hold amount differs": (_hold_amount, Kind.AMOUNT_DIFFERS, "completed"),
    "reservation lost": (_lost_reservation, Kind.MISSING_IN_DATABASE, "completed"),
    "capture never announced": (_capture_not_announced, Kind.MISSING_IN_STREAM, "completed"),
    "capture announced twice": (_second_capture_event, Kind.DUPLICATE_EFFECT, "completed"),
    "refunded twice": (_second_refund_entry, Kind.DUPLICATE_EFFECT, "refunded"),
    "unbalanced entry": (_unbalanced, Kind.UNBALANCED_ENTRY, "completed"),
    "orphan hold": (_hold_never_released, Kind.ORPHAN_HOLD, "no stock"),
    "orphan reservation": (_reservation_never_released, Kind.ORPHAN_RESERVATION, "cancelled after capture"),
    "stuck": (_stuck, Kind.STUCK_SAGA, "no funds"),
}


@pytest.mark.parametrize("name", PLANTED)
def test_each_planted_fault_is_found_as_its_kind_on_its_payment_only(name: str) -> None:
    plant, kind, ending = PLANTED[name]
    books, ids = every_ending()
    plant(books, ids)
    findings = found(books.observations())
    assert (kind, ids[ending]) in findings
    assert {payment_id for _, payment_id in findings} == {ids[ending]}, findings


def test_settlement_missing_extra_and_differs_are_found() -> None:
    books, ids = every_ending()
    lines = [line for line in books.settled if line.reference != ids["completed"]]
    lines = [
        dataclasses.replace(line, amount_minor=PRICE - 1)
        if line.reference == ids["refunded"] and line.type == "refund"
        else line
        for line in lines
    ]
    lines.append(SettlementLine(9, "unknown", "capture", 10, "EUR", END.date()))
    findings = found(books.observations(settlement=lines))
    assert findings == {
        (Kind.SETTLEMENT_MISSING, ids["completed"]),
        (Kind.SETTLEMENT_DIFFERS, ids["refunded"]),
        (Kind.SETTLEMENT_EXTRA, "unknown"),
    }


def test_a_settlement_paid_in_parts_matches_and_a_late_value_date_does_not() -> None:
    books, ids = every_ending()
    lines = [line for line in books.settled if line.reference != ids["completed"]]
    day = END.date()
    parts = [
        SettlementLine(1, ids["completed"], "capture", 1000, "EUR", day),
        SettlementLine(2, ids["completed"], "capture", 250, "EUR", day),
    ]
    assert found(books.observations(settlement=lines + parts)) == set()
    late = [parts[0], dataclasses.replace(parts[1], value_date=day + dt.timedelta(days=settlement.VALUE_DAYS + 1))]
    assert found(books.observations(settlement=lines + late)) == {(Kind.SETTLEMENT_DIFFERS, ids["completed"])}


def test_a_payment_still_moving_at_the_window_end_is_not_judged_yet() -> None:
    books = Books()
    moving = books.purchase("completed", at=END - dt.timedelta(seconds=30))
    replace(books.holds, moving, status="HELD")
    replace(books.payments, moving, status="STOCK_RESERVED")
    mismatches, counts = reconcile(books.observations(settlement=[]))
    assert mismatches == [] and counts.in_flight == 1


def test_records_of_payments_created_after_the_window_are_left_to_the_next_run() -> None:
    books = Books()
    later = books.purchase("refunded")
    books.payments = []
    assert found(books.observations(out_of_range=frozenset({later}), settlement=None)) == set()
    assert (Kind.MISSING_IN_DATABASE, later) in found(books.observations(settlement=None))


def test_an_older_payment_is_judged_on_what_happened_in_range_only() -> None:
    """Last week's purchase refunded today: its request, capture and sale are not read."""
    books = Books()
    old = books.purchase("refunded")
    created = WINDOW.lookback_start - dt.timedelta(days=5)
    replace(books.payments, old, created_at=created, deadline_at=created + dt.timedelta(seconds=30))
    refund = ("PaymentRefundRequested", "FundsRefunded", "StockRestocked", "PaymentRefunded")
    books.events = [event for event in books.events if event.event_type in refund]
    books.entries = [entry for entry in books.entries if entry.kind == "REFUND"]
    assert found(books.observations(settlement=None)) == set()
    # What happened in range is still judged: refunded twice.
    books.entries.append(EntryRecord("e2", "REFUND", old, END - dt.timedelta(hours=1), (("EUR", 0),), PRICE, "EUR"))
    assert found(books.observations(settlement=None)) == {(Kind.DUPLICATE_EFFECT, old)}


def test_a_lost_event_is_found_even_when_a_later_one_survives() -> None:
    books, ids = every_ending()
    books.events = [e for e in books.events if not (e.saga_id == ids["completed"] and e.event_type == "StockReserved")]
    mismatches, _ = reconcile(books.observations())
    assert [(m.kind, m.payment_id, m.source, m.reference) for m in mismatches] == [
        (Kind.MISSING_IN_STREAM, ids["completed"], "inventory", "StockReserved")
    ]


def test_money_moved_for_a_payment_that_payments_never_had_is_found() -> None:
    books = Books()
    ghost = books.purchase("completed")
    books.payments = []
    books.events = [event for event in books.events if event.producer != "payments"]
    assert (Kind.OUTCOME_DISAGREES, ghost) in found(books.observations(settlement=None))


def test_a_review_whose_hold_was_refused_then_declined_reconciles() -> None:
    """The ledger leaves a marker (CANCELLED, with an id) where it refused the hold, and answers
    the decline's release with that id: nothing was ever held."""
    books = Books()
    at = END - dt.timedelta(hours=2)
    payment_id = str(uuid.uuid4())
    for index, event_type in enumerate(
        ("PaymentRequested", "FundsHoldFailed", "PaymentCancellationRequested", "FundsReleased", "PaymentDeclined")
    ):
        books.event(payment_id, event_type, at + dt.timedelta(milliseconds=50 * index))
    last = at + dt.timedelta(seconds=1)
    books.payments.append(PaymentRecord(payment_id, "REJECTED", PRICE, "EUR", "sku-1", 1, at, last, last))
    books.holds.append(HoldRecord(payment_id, "marker", "CANCELLED", 0, "", last))
    assert found(books.observations(settlement=None)) == set()


def test_dead_letters_are_reported_with_their_reason() -> None:
    letter = DeadLetter(
        "LEDGER_DEAD_LETTERS", 3, "paysaga.deadletter.ledger.FundsHeld", END, "no such account", "p-1", "FundsHeld"
    )
    mismatches, _ = reconcile(Observations(WINDOW, dead_letters=[letter]))
    assert [(m.kind, m.payment_id, m.source, m.reference) for m in mismatches] == [
        (Kind.DEAD_LETTER, "p-1", "ledger", "LEDGER_DEAD_LETTERS #3")
    ]
    assert "no such account" in mismatches[0].detail


def test_the_json_is_the_same_bytes_for_the_same_data_and_sorted_most_urgent_first() -> None:
    books, ids = every_ending()
    _unbalanced(books, ids)
    _hold_never_released(books, ids)
    _reservation_never_released(books, ids)
    texts = []
    for _ in range(2):
        mismatches, counts = reconcile(books.observations())
        report = reports.Report(WINDOW, [], [], counts, mismatches)
        texts.append(reports.as_json(report))
    assert texts[0] == texts[1]
    parsed = json.loads(texts[0])
    assert parsed["verdict"] == Verdict.MISMATCHES
    priorities = [mismatch["priority"] for mismatch in parsed["mismatches"]]
    assert priorities == sorted(priorities) and priorities[0] == 1
    # A hold or reservation changed back in the database also contradicts its stream.
    expected = {"unbalanced_entry": 1, "missing_in_database": 2, "orphan_hold": 1, "orphan_reservation": 1}
    assert parsed["counts"]["by_kind"] == expected
    assert sum(sum(kinds.values()) for kinds in parsed["by_hour"].values()) == 5


def test_an_incomplete_run_judges_nothing() -> None:
    report = reports.Report(WINDOW, [], ["ledger database: unreachable"], None, [])
    assert report.verdict == Verdict.INCOMPLETE
    assert "nothing was judged" in reports.as_text(report)
    assert json.loads(reports.as_json(report))["incomplete"] == ["ledger database: unreachable"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("reference,type,amount_minor,currency\n", "lacks value_date"),
        ("reference,type,amount_minor,currency,value_date\np,fee,1,EUR,2026-12-01\n", "line 2: type 'fee'"),
        ("reference,type,amount_minor,currency,value_date\np,capture,-1,EUR,2026-12-01\n", "line 2: amount_minor '-1'"),
        ("reference,type,amount_minor,currency,value_date\np,capture,1,eur,2026-12-01\n", "line 2: currency 'eur'"),
        ("reference,type,amount_minor,currency,value_date\np,capture,1,EUR,1/12/2026\n", "line 2: value_date"),
        ("reference,type,amount_minor,currency,value_date\n,capture,1,EUR,2026-12-01\n", "line 2: no reference"),
    ],
)
def test_a_settlement_file_that_cannot_be_read_says_which_line(text: str, error: str) -> None:
    with pytest.raises(settlement.SettlementFileError, match=error):
        settlement.parse(text)


def test_a_settlement_file_reads_back_what_was_written() -> None:
    lines = [SettlementLine(2, "p", "capture", 1250, "EUR", dt.date(2026, 12, 1))]
    assert settlement.parse(settlement.render(lines)) == lines


def test_the_window_and_the_nightly_schedule() -> None:
    assert WINDOW.start == END - dt.timedelta(hours=24) and WINDOW.lookback_start == END - dt.timedelta(hours=72)
    with pytest.raises(ValueError, match="time zone"):
        Window(dt.datetime(2026, 12, 1))
    at = parse_daily_time("02:30")
    assert next_run(dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC), at) == dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC)
    assert next_run(dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC), at) == dt.datetime(
        2026, 12, 2, 2, 30, tzinfo=dt.UTC
    )


def test_only_the_newest_reports_are_kept(tmp_path: Path) -> None:
    for day in range(1, 6):
        for suffix in ("json", "html", "txt"):
            (tmp_path / f"reconciliation-202612{day:02d}T0230Z.{suffix}").write_text("x")
    deleted = keep_newest(tmp_path, 2)
    assert len(deleted) == 9
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"reconciliation-202612{day:02d}T0230Z.{suffix}" for day in (4, 5) for suffix in ("html", "json", "txt")
    ]


def test_a_mismatch_keeps_its_id_from_run_to_run() -> None:
    one = Mismatch(Kind.ORPHAN_HOLD, "p", "ledger", END, "held")
    assert one.mismatch_id == dataclasses.replace(one, detail="held still", at=END + dt.timedelta(days=1)).mismatch_id
    assert one.mismatch_id != dataclasses.replace(one, payment_id="q").mismatch_id
