"""The payments gRPC servicer: thin, proto in, handler call, proto out."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from paysaga.common.v1.money_pb2 import Money
from paysaga.core import validation
from paysaga.core.access import Caller, admin_scope
from paysaga.core.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from paysaga.core.validation import PageRequest
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.runtime import metrics
from paysaga.runtime.grpc_server import GrpcService, abort_for, domain_errors_as_status
from paysaga.runtime.security.authz import Rule, current_caller
from paysaga.runtime.storage.group_commit import GroupCommit
from paysaga.runtime.storage.unit_of_work import Database
from paysaga.runtime.tasks import wait_any
from services.payments import handlers
from services.payments.adapters import views
from services.payments.adapters.actions import action_of_proto, action_proto
from services.payments.adapters.repository import PaymentsUnit, as_utc
from services.payments.admission import Admission
from services.payments.domain import (
    TERMINAL,
    Payment,
    PaymentLimits,
    PurchaseRequest,
    Status,
    admission_limits,
    tier_name,
)
from services.payments.rules.ruleset import exact
from services.payments.rules.screening import Screening

# A watcher re-reads its payment when this process commits a change to it, and also (another
# replica may have made the change) after a pause that starts here and doubles, up to the most,
# while nothing changes.
WATCH_POLL_MIN_S = 1.0
WATCH_POLL_MAX_S = 8.0
MAX_IDEMPOTENCY_KEY_CHARS = 128


# A review's decision on a payment: handlers.approve_payment (with its limits) or decline_payment.
Review = Callable[[PaymentsUnit, str, str, Caller], Awaitable[Payment]]


class WatchEnded(DeadlineExceeded):
    """A WatchPayment stream reached its maximum duration."""


class Watchers:
    """The open WatchPayment streams of this process: each payment's watchers, woken only when a
    commit changed that payment, and how many streams each client holds."""

    def __init__(self, max_per_client: int) -> None:
        self._max_per_client = max_per_client
        self._by_payment: dict[str, set[asyncio.Event]] = {}
        self._per_client: dict[str, int] = {}

    @contextlib.contextmanager
    def watching(self, payment_id: str, client: str) -> Iterator[asyncio.Event]:
        """An event set whenever this process commits a change to the payment; raises
        ResourceExhausted if the client already holds its share of streams."""
        if self._per_client.get(client, 0) >= self._max_per_client:
            raise ResourceExhausted(
                f"{client} already watches {self._max_per_client} payments here; close a stream first"
            )
        changed = asyncio.Event()
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self._by_payment.setdefault(payment_id, set()).add(changed)
        try:
            yield changed
        finally:
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]
            watchers = self._by_payment[payment_id]
            watchers.discard(changed)
            if not watchers:
                del self._by_payment[payment_id]

    def committed(self, unit: PaymentsUnit) -> None:
        for payment_id in unit.payments.changed:
            for changed in self._by_payment.get(payment_id, ()):
                changed.set()


class PaymentServiceServicer(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, database: Database[PaymentsUnit], rules: PaymentLimits, screening: Screening) -> None:
        self._database = database
        self._rules = rules
        self._screening = screening
        self._watchers = Watchers(rules.max_watches_per_client)
        self._admission = Admission(database, admission_limits(rules))
        self._creates: GroupCommit[PaymentsUnit, tuple[Payment, bool]] = GroupCommit(database)
        database.on_commit(self._watchers.committed)
        database.on_commit(count_ended_sagas)

    @domain_errors_as_status
    async def CreatePayment(
        self, request: payments_pb2.CreatePaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.CreatePaymentResponse:
        purchase, caller = purchase_request(request), current_caller()
        async with self._admission.admitted(tier_name(purchase.sla_tier)):
            payment, replayed = await self._creates.run(
                lambda unit: handlers.create_payment(unit, purchase, self._rules, caller, self._screening.decide)
            )
        # Ops see the decision: a new payment carries it, a replay's is read back.
        recorded = None
        if caller.is_admin(handlers.SERVICE):
            recorded = (
                views.DecisionRecord(payment.payment_id, payment.created_at, payment.decision)
                if payment.decision is not None
                else await views.decision(self._database, payment.payment_id)
            )
        return payments_pb2.CreatePaymentResponse(payment=payment_message(payment, recorded), replayed=replayed)

    @domain_errors_as_status
    async def GetPayment(
        self, request: payments_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        caller = current_caller()
        payment = await views.payment(self._database, payment_id_of(request), caller)
        return payment_message(payment, await self._decision_for(caller, payment.payment_id))

    async def _decision_for(self, caller: Caller, payment_id: str) -> views.DecisionRecord | None:
        """The payment's decision, for ops only: its rules, inputs and thresholds would show a
        client how to stay under them, and the other party's statistics."""
        return await views.decision(self._database, payment_id) if caller.is_admin(handlers.SERVICE) else None

    @domain_errors_as_status
    async def ListPayments(
        self, request: payments_pb2.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListPaymentsResponse:
        query = list_query(request)
        found, next_token = await views.payments_page(
            self._database,
            query.page,
            current_caller(),
            payer=query.payer,
            merchant=query.merchant,
            status=query.status,
        )
        return payments_pb2.ListPaymentsResponse(
            payments=[payment_message(payment) for payment in found], next_page_token=next_token
        )

    async def WatchPayment(
        self, request: payments_pb2.WatchPaymentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[payments_pb2.PaymentUpdate]:
        """Every status change in order, from the first, until the payment's latest status is
        terminal; at most watch_max_s (then DEADLINE_EXCEEDED: watch again to go on)."""
        try:
            caller = current_caller()
            payment_id = payment_id_of(request)
            payment = await views.payment(self._database, payment_id, caller)
            with self._watchers.watching(payment_id, caller.identity) as changed:
                async for update in self._updates(payment, changed):
                    yield update
        except Exception as error:  # noqa: BLE001 - abort_for re-raises what is not ours to answer
            await abort_for(context, error)

    async def _updates(self, payment: Payment, changed: asyncio.Event) -> AsyncIterator[payments_pb2.PaymentUpdate]:
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._rules.watch_max_s
        seen_version, pause_s = 0, WATCH_POLL_MIN_S
        while True:
            changed.clear()  # before reading: a commit from now on wakes the wait below
            changes = await views.history_after(self._database, payment.payment_id, seen_version)
            for change in changes:
                payment.status, payment.reason, payment.version = Status(change.status), change.reason, change.version
                payment.updated_at = as_utc(change.changed_at)
                yield payments_pb2.PaymentUpdate(payment=payment_message(payment))
                seen_version = change.version
            # A COMPLETED payment may be refunded later: stop at the latest status if it is terminal.
            if payment.status in TERMINAL:
                return
            left_s = ends_at - loop.time()
            if left_s <= 0:
                raise WatchEnded(f"the watch lasted its {self._rules.watch_max_s:g} s; watch again to go on")
            pause_s = WATCH_POLL_MIN_S if changes else min(pause_s * 2, WATCH_POLL_MAX_S)
            await wait_any([changed], min(pause_s, left_s))

    @domain_errors_as_status
    async def CancelPayment(
        self, request: payments_pb2.CancelPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        payment_id, reason, caller = payment_id_of(request), reason_of(request), current_caller()
        payment = await self._database.retrying(lambda unit: handlers.cancel_payment(unit, payment_id, reason, caller))
        return payment_message(payment)

    @domain_errors_as_status
    async def RefundPayment(
        self, request: payments_pb2.RefundPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        payment_id, reason, caller = payment_id_of(request), reason_of(request), current_caller()
        payment = await self._database.retrying(lambda unit: handlers.refund_payment(unit, payment_id, reason, caller))
        return payment_message(payment)

    @domain_errors_as_status
    async def ApprovePayment(
        self, request: payments_pb2.ReviewPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        return await self._review(request, functools.partial(handlers.approve_payment, limits=self._rules))

    @domain_errors_as_status
    async def DeclinePayment(
        self, request: payments_pb2.ReviewPaymentRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.Payment:
        return await self._review(request, handlers.decline_payment)

    async def _review(self, request: payments_pb2.ReviewPaymentRequest, decide: Review) -> payments_pb2.Payment:
        payment_id, reason, caller = payment_id_of(request), reason_of(request), current_caller()
        payment = await self._database.retrying(lambda unit: decide(unit, payment_id, reason, caller))
        return payment_message(payment, await self._decision_for(caller, payment_id))

    @domain_errors_as_status
    async def ListDecisions(
        self, request: payments_pb2.ListDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> payments_pb2.ListDecisionsResponse:
        query = decisions_query(request)
        found, next_token = await views.decisions_page(self._database, query)
        return payments_pb2.ListDecisionsResponse(
            decisions=[decision_message(row) for row in found], next_page_token=next_token
        )


# The request parsers: a request in, checked values out, or InvalidArgument; no I/O.


class _HasPaymentId(Protocol):
    payment_id: str


class _HasReason(Protocol):
    reason: str


def payment_id_of(request: _HasPaymentId) -> str:
    return validation.uuid_text(request.payment_id, "payment_id")


def reason_of(request: _HasReason) -> str:
    return validation.text(request.reason, "reason")


@dataclass(frozen=True)
class ListQuery:
    page: PageRequest
    payer: str = ""
    merchant: str = ""
    status: Status | None = None


def list_query(request: payments_pb2.ListPaymentsRequest) -> ListQuery:
    return ListQuery(
        validation.page_request(request.page_size, request.page_token),
        validation.uuid_text(request.payer_account_id, "payer_account_id") if request.payer_account_id else "",
        validation.uuid_text(request.merchant_account_id, "merchant_account_id") if request.merchant_account_id else "",
        status_of_proto(request.status) if request.status else None,
    )


def decisions_query(request: payments_pb2.ListDecisionsRequest) -> views.DecisionsQuery:
    if request.action and request.action not in payments_pb2.DecisionAction.values():
        raise InvalidArgument(f"action {request.action} is not a known decision action")
    rule_id = validation.text(request.rule_id, "rule_id", max_chars=64)
    return views.DecisionsQuery(
        validation.page_request(request.page_size, request.page_token),
        action=action_of_proto(request.action) if request.action else None,
        rule_id=rule_id,
        shadow_only=request.shadow_only,
        payer=validation.uuid_text(request.payer_account_id, "payer_account_id") if request.payer_account_id else "",
        merchant=(
            validation.uuid_text(request.merchant_account_id, "merchant_account_id")
            if request.merchant_account_id
            else ""
        ),
        since=_since(request),
    )


def _since(request: payments_pb2.ListDecisionsRequest) -> dt.datetime | None:
    if not request.HasField("since"):
        return None
    try:
        return request.since.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument("since is not a valid time") from None


def decision_message(recorded: views.DecisionRecord) -> payments_pb2.Decision:
    """A recorded decision as the API shows it."""
    decision = recorded.decision
    message = payments_pb2.Decision(
        payment_id=recorded.payment_id,
        rule_set_sha256=decision.rule_set_sha256,
        action=action_proto(decision.action),
        score=decision.score,
        shadow_action=action_proto(decision.shadow_action),
        hits=[
            payments_pb2.RuleHit(
                rule_id=hit.rule_id,
                shadow=hit.shadow,
                action=action_proto(hit.action),
                score=hit.score,
                reason=hit.reason,
                inputs=dict(hit.inputs),
            )
            for hit in decision.hits
        ],
        inputs={
            f"{group}.{name}": exact(value)
            for group, values in decision.inputs.items()
            for name, value in values.items()
        },
    )
    message.decided_at.FromDatetime(recorded.decided_at)
    return message


def purchase_request(request: payments_pb2.CreatePaymentRequest) -> PurchaseRequest:
    key = validation.text(
        request.idempotency_key, "idempotency_key", required=True, max_chars=MAX_IDEMPOTENCY_KEY_CHARS
    )
    payer = validation.uuid_text(request.payer_account_id, "payer_account_id")
    merchant = validation.uuid_text(request.merchant_account_id, "merchant_account_id")
    if payer == merchant:
        raise InvalidArgument("payer_account_id and merchant_account_id must differ")
    if request.sla_tier not in payments_pb2.SlaTier.values():
        raise InvalidArgument(f"sla_tier {request.sla_tier} is not a known tier")
    return PurchaseRequest(
        key,
        payer,
        merchant,
        validation.sku(request.sku),
        validation.positive_quantity(request.quantity),
        validation.positive_amount(request.amount.amount_minor),
        validation.currency(request.amount.currency, "amount.currency"),
        request.sla_tier or payments_pb2.SLA_TIER_STANDARD,
        region=validation.region(request.region),
    )


# The events payments emits when a payment reaches a terminal status, and that status.
_ENDINGS = {
    "PaymentCompleted": "COMPLETED",
    "PaymentFailed": "FAILED",
    "PaymentCancelled": "CANCELLED",
    "PaymentRejected": "REJECTED",
    "PaymentDeclined": "REJECTED",
    "PaymentRefunded": "REFUNDED",
}


def count_ended_sagas(unit: PaymentsUnit) -> None:
    """paysaga_sagas_ended_total, from what a commit emitted (a savepoint undone takes its events
    with it, so each ending is counted once)."""
    for envelope in unit.emitted:
        outcome = _ENDINGS.get(envelope.event_type)
        if outcome is not None:
            metrics.SAGAS_ENDED.labels(outcome, envelope.sla_tier or "standard").inc()


def status_of_proto(value: int) -> Status:
    names = {number: name for name, number in payments_pb2.PaymentStatus.items()}
    name = names.get(value, "PAYMENT_STATUS_UNSPECIFIED")  # type: ignore[call-overload]
    if name == "PAYMENT_STATUS_UNSPECIFIED":
        raise InvalidArgument(f"status {value} is not a known payment status")
    return Status(name.removeprefix("PAYMENT_STATUS_"))


def payment_message(payment: Payment, decision: views.DecisionRecord | None = None) -> payments_pb2.Payment:
    """A payment as the API shows it, with its decision if given."""
    request = payment.request
    message = payments_pb2.Payment(
        payment_id=payment.payment_id,
        idempotency_key=request.idempotency_key,
        payer_account_id=request.payer_account_id,
        merchant_account_id=request.merchant_account_id,
        sku=request.sku,
        quantity=request.quantity,
        amount=Money(amount_minor=request.amount_minor, currency=request.currency),
        sla_tier=request.sla_tier,  # type: ignore[arg-type]
        status=payments_pb2.PaymentStatus.Value(f"PAYMENT_STATUS_{payment.status.value}"),
        reason=payment.reason,
        version=payment.version,
        region=request.region,
    )
    if decision is not None:
        message.decision.CopyFrom(decision_message(decision))
    message.created_at.FromDatetime(payment.created_at)
    message.updated_at.FromDatetime(payment.updated_at)
    return message


def grpc_service(database: Database[PaymentsUnit], rules: PaymentLimits, screening: Screening) -> GrpcService:
    return GrpcService.of(
        PaymentServiceServicer(database, rules, screening),
        payments_pb2.DESCRIPTOR.services_by_name["PaymentService"],
        payments_pb2_grpc.add_PaymentServiceServicer_to_server,
        # No service of ours calls another's API (they talk through events): external clients only.
        {
            "CreatePayment": Rule.clients("payments:write"),
            "GetPayment": Rule.clients("payments:read"),
            "ListPayments": Rule.clients("payments:read"),
            "WatchPayment": Rule.clients("payments:read"),
            "CancelPayment": Rule.clients("payments:write"),
            "RefundPayment": Rule.clients("payments:write"),
            "ApprovePayment": Rule.clients(admin_scope(handlers.SERVICE)),
            "DeclinePayment": Rule.clients(admin_scope(handlers.SERVICE)),
            "ListDecisions": Rule.clients(admin_scope(handlers.SERVICE)),
        },
    )
