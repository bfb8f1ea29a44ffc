"""The bank's settlement file, and how it is matched against our captures and refunds.

The file is CSV (UTF-8, comma-separated, a header row first; columns in any order)::

    reference,type,amount_minor,currency,value_date
    0b6f3c1e-8f2a-4c55-9d1e-2f1f7a9c0d11,capture,1500,EUR,2026-12-01
    0b6f3c1e-8f2a-4c55-9d1e-2f1f7a9c0d11,refund,1500,EUR,2026-12-03

It is the bank's (or PSP's) report of our captures and refunds of the run's window, each with
the date it settles on.

- ``reference``: the payment id; ``type``: ``capture`` (money taken from the payer) or
  ``refund`` (money given back); ``amount_minor``: a positive integer in the currency's minor
  units; ``currency``: ISO 4217; ``value_date``: ISO 8601 date the bank settled it.
- Several lines for one reference and type are one settlement paid in parts (one-to-many): their
  amounts add up, each value date is checked.

Matching (rules in the manner of Blnk's: reference, type, amount, currency, date):

- every capture and refund the ledger announced in the window (up to the settle time before its
  end) must be settled, else ``settlement_missing``;
- every line must match a capture or refund announced in the window or its look-back, else
  ``settlement_extra``;
- the amounts must add up exactly, in the same currency, and each value date must fall on the
  day of the capture (or refund) or up to ``VALUE_DAYS`` days later, else ``settlement_differs``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

from services.reconcile.domain import Kind, Mismatch, Window
from services.reconcile.observations import EventFact, SettlementLine

COLUMNS = ("reference", "type", "amount_minor", "currency", "value_date")
TYPES = {"capture": "FundsCaptured", "refund": "FundsRefunded"}
DONE = {"capture": "captured", "refund": "refunded"}
# Value dates from the day of the capture to this many days later match (T+2 and a weekend).
VALUE_DAYS = 4
LINES_MAX = 10_000_000
CURRENCY = re.compile(r"^[A-Z]{3}$")
DIGITS = re.compile(r"[0-9]{1,18}")


class SettlementFileError(Exception):
    """The file cannot be read as a settlement file; the message names the line."""


def parse(text: str) -> list[SettlementLine]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise SettlementFileError(f"line 1: the header lacks {', '.join(missing)} (it needs {','.join(COLUMNS)})")
        lines = []
        for row in reader:
            if reader.line_num > LINES_MAX:
                raise SettlementFileError(f"more than {LINES_MAX} lines")
            lines.append(_line(reader.line_num, row))
    except csv.Error as error:
        raise SettlementFileError(f"line {reader.line_num}: {error}") from None
    return lines


def _line(number: int, row: dict[str, str]) -> SettlementLine:
    def fail(what: str) -> SettlementFileError:
        return SettlementFileError(f"line {number}: {what}")

    values = {column: (row.get(column) or "").strip() for column in COLUMNS}
    if not values["reference"]:
        raise fail("no reference")
    if values["type"] not in TYPES:
        raise fail(f"type {values['type']!r} is not one of {', '.join(TYPES)}")
    if not DIGITS.fullmatch(values["amount_minor"]) or int(values["amount_minor"]) <= 0:
        raise fail(f"amount_minor {values['amount_minor']!r} is not a positive integer")
    if not CURRENCY.match(values["currency"]):
        raise fail(f"currency {values['currency']!r} is not an ISO 4217 code")
    try:
        value_date = dt.date.fromisoformat(values["value_date"])
    except ValueError:
        raise fail(f"value_date {values['value_date']!r} is not a date (YYYY-MM-DD)") from None
    return SettlementLine(
        number, values["reference"], values["type"], int(values["amount_minor"]), values["currency"], value_date
    )


def render(lines: Iterable[SettlementLine]) -> str:
    """A settlement file with these lines (what a test or the benchmark writes)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for line in lines:
        writer.writerow((line.reference, line.type, line.amount_minor, line.currency, line.value_date.isoformat()))
    return out.getvalue()


def compare(lines: Sequence[SettlementLine], events: Sequence[EventFact], window: Window) -> Iterator[Mismatch]:
    settled: dict[tuple[str, str], list[SettlementLine]] = defaultdict(list)
    for line in lines:
        settled[line.reference, line.type].append(line)
    # The first capture (refund) of each payment: a second one is a duplicate effect, not a settlement.
    made: dict[tuple[str, str], EventFact] = {}
    for event in sorted(events, key=lambda event: (event.at, event.stream, event.sequence)):
        for kind, event_type in TYPES.items():
            if event.event_type == event_type:
                made.setdefault((event.saga_id, kind), event)
    for (payment_id, kind), event in sorted(made.items()):
        parts = settled.get((payment_id, kind))
        in_lookback = event.at < window.start
        if parts is None:
            # From the look-back: the previous runs asked for it. Within the settle time of the
            # end: the bank's file may not have it yet; the next run asks.
            if not in_lookback and event.at + window.settle <= window.end:
                yield Mismatch(
                    Kind.SETTLEMENT_MISSING,
                    payment_id,
                    "settlement",
                    event.at,
                    f"{kind} of {event.amount_minor} {event.currency} on {event.at.date()} is not settled in the file",
                    kind,
                )
            continue
        yield from _differences(payment_id, kind, event, parts, in_lookback)
    for (reference, kind), parts in sorted(settled.items()):
        if (reference, kind) not in made:
            first = parts[0]
            total = sum(part.amount_minor for part in parts)
            yield Mismatch(
                Kind.SETTLEMENT_EXTRA,
                reference,
                "settlement",
                dt.datetime.combine(first.value_date, dt.time(), dt.UTC),
                f"{kind} of {total} {first.currency} settled on {first.value_date} (line {first.line_number}) "
                "matches no capture or refund of ours",
                kind,
            )


def _differences(
    payment_id: str, kind: str, event: EventFact, parts: list[SettlementLine], in_lookback: bool
) -> Iterator[Mismatch]:
    total = sum(part.amount_minor for part in parts)
    currencies = sorted({part.currency for part in parts})
    numbers = ", ".join(str(part.line_number) for part in parts)
    problems = []
    if total != event.amount_minor or currencies != [event.currency]:
        problems.append(
            f"settled {total} {'/'.join(currencies)}, we {DONE[kind]} {event.amount_minor} {event.currency}"
        )
    first_day = event.at.date()
    late = [part for part in parts if not first_day <= part.value_date <= first_day + dt.timedelta(days=VALUE_DAYS)]
    if late:
        problems.append(
            f"value date {late[0].value_date} is not within {VALUE_DAYS} days from the {kind} on {first_day}"
        )
    if problems:
        yield Mismatch(
            Kind.SETTLEMENT_DIFFERS,
            payment_id,
            "settlement",
            event.at,
            f"{'; '.join(problems)} (line {numbers})",
            kind,
            in_lookback,
        )
