"""One run's comparison: every payment's checks, the journal's balance, the dead letters and the
settlement file. Pure code, no I/O; the same observations always give the same findings."""

from __future__ import annotations

from dataclasses import dataclass

from services.reconcile import settlement
from services.reconcile.checks import SagaChecks
from services.reconcile.domain import Kind, Mismatch
from services.reconcile.observations import Observations, sagas_of


@dataclass(frozen=True)
class Counts:
    # Payments checked: created in the window, or in the look-back before it.
    sagas: int
    in_window: int
    in_lookback: int
    # Still moving at the window's end: counted, judged by the next run.
    in_flight: int
    events: int
    journal_entries: int
    dead_letters: int
    # None: no settlement file was given.
    settlement_lines: int | None


def reconcile(observed: Observations) -> tuple[list[Mismatch], Counts]:
    window = observed.window
    found: list[Mismatch] = []
    sagas = sagas_of(observed)
    in_lookback = in_flight = 0
    for saga in sagas.values():
        checks = SagaChecks(saga, window)
        in_lookback += checks.in_lookback
        in_flight += checks.in_flight
        found.extend(checks.all())
    for entry in observed.entries:
        unbalanced = [(currency, total) for currency, total in entry.sums_minor if total != 0]
        if unbalanced or not entry.sums_minor:
            sums = ", ".join(f"{total:+d} {currency}" for currency, total in unbalanced) or "no lines"
            in_lookback_entry = entry.created_at < window.start
            found.append(
                Mismatch(
                    Kind.UNBALANCED_ENTRY,
                    entry.saga_id,
                    "ledger",
                    entry.created_at,
                    f"{entry.kind} entry {entry.entry_id} sums to {sums}",
                    entry.entry_id,
                    in_lookback_entry,
                )
            )
    for letter in observed.dead_letters:
        found.append(
            Mismatch(
                Kind.DEAD_LETTER,
                letter.saga_id,
                letter.stream.removesuffix("_DEAD_LETTERS").lower(),
                letter.at,
                f"{letter.event_type} parked ({letter.reason or 'no reason given'})",
                f"{letter.stream} #{letter.sequence}",
                letter.at < window.start,
            )
        )
    if observed.settlement is not None:
        found.extend(settlement.compare(observed.settlement, observed.events, window))
    found.sort(key=Mismatch.sort_key)
    counts = Counts(
        sagas=len(sagas),
        in_window=len(sagas) - in_lookback,
        in_lookback=in_lookback,
        in_flight=in_flight,
        events=len(observed.events),
        journal_entries=len(observed.entries),
        dead_letters=len(observed.dead_letters),
        settlement_lines=None if observed.settlement is None else len(observed.settlement),
    )
    return found, counts
