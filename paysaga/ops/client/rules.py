"""The fraud rules from the command line: check a rules file, backtest it against the recorded
decisions, list decisions, and decide the purchases held for review.

  paysaga rules check rules.yaml                   # offline: exit 1 with every problem found
  paysaga rules backtest rules.yaml --since 24h    # what would change, touching nothing
  paysaga decisions --action block --since 1h      # also --rule ID, --shadow, --payer, --merchant
  paysaga review list | approve PAYMENT_ID [--reason ...] | decline PAYMENT_ID --reason ...
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from services.payments.adapters.actions import action_of_proto, action_proto
from services.payments.domain import Action

if TYPE_CHECKING:
    # The rules engine (CEL) is imported by the commands that use it: the CLI's other commands
    # start a good part of a second sooner without it.
    from services.payments.rules.backtest import Backtest, Recorded

TIMEOUT_S = 10.0
PAGE_SIZE = 500
CHANGES_SHOWN = 50
_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Shown(Protocol):
    def show(self, message: Any, text: str) -> None: ...


def duration(text: str) -> dt.timedelta:
    """'90s', '30m', '24h', '7d'."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"a duration such as 30m, 24h or 7d, got {text!r}")
    return dt.timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


def add_commands(areas: Any) -> None:
    rules = areas.add_parser("rules", help="the fraud rules file").add_subparsers(dest="action", required=True)
    rules.add_parser("check", help="check a rules file (offline)").add_argument("file", type=Path)
    tried = rules.add_parser("backtest", help="replay recorded decisions through a rules file")
    tried.add_argument("file", type=Path)
    tried.add_argument("--since", type=duration, default=duration("24h"), help="e.g. 30m, 24h, 7d (default 24h)")

    decisions = areas.add_parser("decisions", help="the fraud rules' decisions, oldest first (ops)")
    decisions.add_argument("--action", choices=[action.value for action in Action], default="")
    decisions.add_argument("--rule", default="", help="decisions in which this rule fired")
    decisions.add_argument("--shadow", action="store_true", help="only decisions in which a shadow rule fired")
    decisions.add_argument("--payer", default="")
    decisions.add_argument("--merchant", default="")
    decisions.add_argument("--since", type=duration, default=None, help="e.g. 30m, 24h, 7d")
    decisions.add_argument("--page-size", type=int, default=0)
    decisions.add_argument("--page-token", default="")

    review = areas.add_parser("review", help="purchases held for review (ops)").add_subparsers(
        dest="action", required=True
    )
    review.add_parser("list", help="the payments UNDER_REVIEW, oldest first")
    approve = review.add_parser("approve", help="let a purchase held for review go on")
    approve.add_argument("payment_id")
    approve.add_argument("--reason", default="")
    decline = review.add_parser("decline", help="refuse a purchase held for review (its hold is released)")
    decline.add_argument("payment_id")
    decline.add_argument("--reason", required=True)


def check(path: Path) -> tuple[int, str]:
    """(exit status, what to print): 0 and a summary, or 1 and every problem found."""
    from services.payments.rules.reload import load
    from services.payments.rules.ruleset import RulesError

    try:
        rule_set = load(path)
    except RulesError as error:
        return 1, str(error).replace("; ", "\n  ")
    shadow = sum(rule.shadow for rule in rule_set.rules)
    thresholds = rule_set.thresholds
    return 0, (
        f"{path}: {len(rule_set.rules)} rules ({shadow} in shadow mode), score thresholds review "
        f"{thresholds.review} / block {thresholds.block}, sha256 {rule_set.sha256}"
    )


async def recorded_since(stub: payments_pb2_grpc.PaymentServiceStub, since: dt.datetime) -> AsyncIterator[Recorded]:
    from services.payments.rules.backtest import Recorded
    from services.payments.rules.ruleset import parse_inputs

    request = payments_pb2.ListDecisionsRequest(page_size=PAGE_SIZE)
    request.since.FromDatetime(since)
    while True:
        page = await stub.ListDecisions(request, timeout=TIMEOUT_S)
        for decision in page.decisions:
            yield Recorded(decision.payment_id, action_of_proto(decision.action), parse_inputs(dict(decision.inputs)))
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


def describe_backtest(path: Path, since: dt.datetime, result: Backtest) -> str:
    lines = [
        f"backtest of {path} (sha256 {result.rule_set_sha256[:12]}) on {result.decisions} decisions since "
        f"{since:%Y-%m-%d %H:%M:%S} UTC: {result.changed} would change",
    ]
    for (was, becomes), count in sorted(result.transitions.items(), key=lambda item: -item[1]):
        lines.append(f"  {was.value:>6} -> {becomes.value:<6} {count}" + ("" if was is not becomes else " (unchanged)"))
    for rule_id, count in sorted(result.shadow_hits.items()):
        lines.append(f"  shadow rule {rule_id} would have fired {count} times")
    for change in result.changes[:CHANGES_SHOWN]:
        fired = ", ".join(change.rules) or "no rule"
        lines.append(f"  payment {change.payment_id}: {change.was.value} -> {change.becomes.value} ({fired})")
    if len(result.changes) > CHANGES_SHOWN:
        lines.append(f"  ... and {len(result.changes) - CHANGES_SHOWN} more (--json lists them all)")
    return "\n".join(lines)


def backtest_json(result: Backtest) -> str:
    return json.dumps(
        {
            "rule_set_sha256": result.rule_set_sha256,
            "decisions": result.decisions,
            "changed": result.changed,
            "transitions": [
                {"from": was.value, "to": becomes.value, "count": count}
                for (was, becomes), count in result.transitions.items()
            ],
            "shadow_hits": dict(result.shadow_hits),
            "changes": [
                {
                    "payment_id": change.payment_id,
                    "from": change.was.value,
                    "to": change.becomes.value,
                    "rules": list(change.rules),
                    "reason": change.reason,
                }
                for change in result.changes
            ],
        }
    )


def describe_decision(decision: payments_pb2.Decision) -> str:
    enforced = ", ".join(hit.rule_id for hit in decision.hits if not hit.shadow) or "none"
    shadow = [hit.rule_id for hit in decision.hits if hit.shadow]
    would = (
        f"; shadow: {', '.join(shadow)} (would have: {action_of_proto(decision.shadow_action).value})" if shadow else ""
    )
    return (
        f"{decision.decided_at.ToDatetime():%Y-%m-%d %H:%M:%S}  payment {decision.payment_id}  "
        f"{action_of_proto(decision.action).value:<6} score {decision.score:<4} rules: {enforced}{would}  "
        f"rule set {decision.rule_set_sha256[:12]}"
    )


async def run(
    args: argparse.Namespace,
    stub: payments_pb2_grpc.PaymentServiceStub,
    out: Shown,
    describe_payment: Callable[[payments_pb2.Payment], str],
) -> int:
    """Everything but `rules check` (which main runs offline)."""
    if args.area == "rules":
        from services.payments.rules.backtest import backtest
        from services.payments.rules.reload import load
        from services.payments.rules.ruleset import RulesError

        since = dt.datetime.now(dt.UTC) - args.since
        try:
            candidate = load(args.file)
        except RulesError as error:  # the candidate file
            print(f"paysaga: {error}", file=sys.stderr)
            return 1
        result = backtest(candidate, [recorded async for recorded in recorded_since(stub, since)])
        print(backtest_json(result) if args.json else describe_backtest(args.file, since, result), flush=True)
        return 0
    if args.area == "decisions":
        request = payments_pb2.ListDecisionsRequest(
            action=action_proto(Action(args.action) if args.action else None),
            rule_id=args.rule,
            shadow_only=args.shadow,
            payer_account_id=args.payer,
            merchant_account_id=args.merchant,
            page_size=args.page_size,
            page_token=args.page_token,
        )
        if args.since is not None:
            request.since.FromDatetime(dt.datetime.now(dt.UTC) - args.since)
        listed = await stub.ListDecisions(request, timeout=TIMEOUT_S)
        more = [f"next page: --page-token {listed.next_page_token}"] if listed.next_page_token else []
        out.show(listed, "\n".join([*map(describe_decision, listed.decisions), *more]) or "no decisions")
        return 0
    if args.action == "list":
        listed = await stub.ListPayments(
            payments_pb2.ListPaymentsRequest(status=payments_pb2.PAYMENT_STATUS_UNDER_REVIEW), timeout=TIMEOUT_S
        )
        out.show(listed, "\n".join(map(describe_payment, listed.payments)) or "no payments under review")
        return 0
    review = payments_pb2.ReviewPaymentRequest(payment_id=args.payment_id, reason=args.reason)
    call = stub.ApprovePayment if args.action == "approve" else stub.DeclinePayment
    payment = await call(review, timeout=TIMEOUT_S)
    out.show(payment, describe_payment(payment))
    return 0
