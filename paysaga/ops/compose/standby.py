"""The compose test's checks of a synchronous PostgreSQL standby (docker-compose.standby.yml): a
completed payment is on the standby the moment the call returns; with the standby stopped, a
purchase is refused within 2 s (UNAVAILABLE, naming the standby) instead of hanging; once it is
back, the client's retry with the same idempotency key goes through."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import grpc

from paysaga.ops.compose import checks
from paysaga.ops.compose.checks import HostClient, Shop, expect, status_name
from paysaga.ops.compose.project import ComposeProject
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.runtime.security import tls

STANDBY = "postgres-standby"
REFUSED_WITHIN_S = 2.0
STANDBY_TIMEOUT_S = 180.0


def status_on_standby(project: ComposeProject, payment_id: str) -> str:
    """The payment's status as the standby has it (read there, as its local superuser)."""
    query = f"SELECT status FROM payments WHERE payment_id = '{uuid.UUID(payment_id)}'"  # noqa: S608 - a UUID, parsed
    psql = ["psql", "--host=/tmp", "--username=paysaga", "--dbname=payments", "--tuples-only", "--no-align"]
    return project.exec(STANDBY, *psql, "--command", query).strip()


async def check_standby(
    project: ComposeProject, target: str, client: HostClient, shop: Shop
) -> tuple[list[str], list[payments_pb2.Payment]]:
    """What was checked, and the payments it made (for the books)."""
    retries: Counter[str] = Counter()
    async with tls.secure_channel(target, client.files, client.token) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        first = await checks.purchase(stub, shop.wallets[0], shop.merchant, shop.sku, retries)
        expect(status_name(first) == "COMPLETED", f"the purchase ended {status_name(first)}: {first.reason}")
        seen = await asyncio.to_thread(status_on_standby, project, first.payment_id)
        expect(seen == "COMPLETED", f"the standby has payment {first.payment_id} as {seen!r}, not COMPLETED")

        await asyncio.to_thread(project.call, "stop", STANDBY, timeout_s=STANDBY_TIMEOUT_S)
        key = str(uuid.uuid4())
        request = checks.purchase_request(shop.wallets[0], shop.merchant, shop.sku, key)
        started = time.monotonic()
        try:
            await stub.CreatePayment(request, timeout=10)
            refusal = None
        except grpc.aio.AioRpcError as error:
            refusal = error
        refused_s = time.monotonic() - started
        expect(refusal is not None, "with the standby stopped, a purchase was accepted")
        assert refusal is not None
        expect(
            refusal.code() == grpc.StatusCode.UNAVAILABLE and "synchronous standby" in (refusal.details() or ""),
            f"with the standby stopped: {refusal.code().name} {refusal.details()}",
        )
        expect(refused_s < REFUSED_WITHIN_S, f"the refusal took {refused_s:.1f} s")

        await asyncio.to_thread(project.call, "up", "--wait", "--no-deps", STANDBY, timeout_s=STANDBY_TIMEOUT_S)
        second = await checks.purchase(stub, shop.wallets[0], shop.merchant, shop.sku, retries, key=key)
        expect(status_name(second) == "COMPLETED", f"the retried purchase ended {status_name(second)}")
    lines = [
        f"payment {first.payment_id[:8]}...: COMPLETED, and COMPLETED on the standby as the call returned",
        f"standby stopped: a purchase refused in {refused_s:.2f} s ({refusal.code().name}: {refusal.details()})",
        f"standby back: the same request (same idempotency key) went through, COMPLETED; retries {dict(retries)}",
    ]
    return lines, [first, second]
