"""The rules' actions as the public API numbers them (paysaga.payments.v1.DecisionAction)."""

from __future__ import annotations

from paysaga.payments.v1 import payments_pb2
from services.payments.domain import Action


def action_of_proto(value: int) -> Action:
    return Action(payments_pb2.DecisionAction.Name(value).removeprefix("DECISION_ACTION_").lower())  # type: ignore[arg-type]


def action_proto(action: Action | None) -> payments_pb2.DecisionAction.ValueType:
    name = action.value if action is not None else "unspecified"
    return payments_pb2.DecisionAction.Value(f"DECISION_ACTION_{name.upper()}")
