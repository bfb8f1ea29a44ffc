"""WatchPayment's bounds on a real payments server (gRPC over mTLS, a real SQLite file): a cap on
the streams one client holds, a maximum duration, only the changed payment's watchers woken, and
UNAVAILABLE when the database is."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from paysaga.core.access import Caller
from paysaga.core.identity import client_identity
from paysaga.payments.v1 import payments_pb2, payments_pb2_grpc
from paysaga.runtime.grpc_server import BuiltServer, create_server
from paysaga.runtime.security import tls
from paysaga.runtime.security.tokens import PUBLIC_KEYS_FILE, TokenVerifier, audience_of
from paysaga.runtime.settings import TlsFiles
from paysaga.runtime.storage import migrations
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import Database
from services.payments import handlers
from services.payments.adapters import grpc_api, tables, views
from services.payments.adapters.repository import PaymentsUnit
from services.payments.bootstrap import screening
from services.payments.domain import PaymentLimits, PurchaseRequest
from tests.helpers import client_token, secure_channel

MIGRATIONS = Path(grpc_api.__file__).parents[1] / "migrations"
LIMITS = PaymentLimits(max_watches_per_client=2, watch_max_s=1.5)
SCREEN = screening(LIMITS, time.time()).decide
OPS = Caller(client_identity("ops"), frozenset({"payments:admin"}))


class Payments:
    def __init__(self, server: BuiltServer, database: Database[PaymentsUnit], certs_dir: Path) -> None:
        self.server, self.database, self.certs_dir = server, database, certs_dir

    def channel(self) -> grpc.aio.Channel:
        return secure_channel(
            f"127.0.0.1:{self.server.port}", TlsFiles.in_directory(self.certs_dir, "ops"), client_token(self.certs_dir)
        )

    async def pending_payment(self) -> str:
        """A payment that stays PENDING: no ledger here to answer."""
        payer, merchant = str(uuid.uuid4()), str(uuid.uuid4())
        request = PurchaseRequest(str(uuid.uuid4()), payer, merchant, "mug", 1, 100, "EUR", 1)
        payment, _ = await self.database.retrying(
            lambda unit: handlers.create_payment(unit, request, LIMITS, OPS, SCREEN)
        )
        return payment.payment_id


@pytest.fixture
async def payments(certs_dir: Path, tmp_path: Path) -> AsyncIterator[Payments]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'payments.db'}")
    await migrations.upgrade(engine, MIGRATIONS)
    database = Database(engine, tables.metadata, PaymentsUnit, producer="payments")
    built = create_server(
        "127.0.0.1:0",
        tls.server_credentials(TlsFiles.in_directory(certs_dir, "payments")),
        [grpc_api.grpc_service(database, LIMITS, screening(LIMITS, time.time()))],
        TokenVerifier(certs_dir / PUBLIC_KEYS_FILE, audience=audience_of("payments")),
    )
    await built.server.start()
    yield Payments(built, database, certs_dir)
    await built.server.stop(grace=None)
    await engine.dispose()


def watch(channel: grpc.aio.Channel, payment_id: str) -> Any:
    return payments_pb2_grpc.PaymentServiceStub(channel).WatchPayment(
        payments_pb2.WatchPaymentRequest(payment_id=payment_id), timeout=30
    )


async def test_one_client_holds_at_most_its_share_of_streams(payments: Payments) -> None:
    payment_id = await payments.pending_payment()
    async with payments.channel() as channel:
        open_streams = [watch(channel, payment_id) for _ in range(LIMITS.max_watches_per_client)]
        for stream in open_streams:
            first = await stream.read()
            assert first.payment.status == payments_pb2.PAYMENT_STATUS_PENDING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await watch(channel, payment_id).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already watches 2 payments here" in (refused.value.details() or "")
        open_streams[0].cancel()
        await asyncio.sleep(0)  # let the server see the cancellation
        for _ in range(100):  # the freed place is taken again, once the server has closed the stream
            again = watch(channel, payment_id)
            try:
                assert (await again.read()).payment.payment_id == payment_id
                break
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("a cancelled stream never gave its place back")


async def test_a_stream_ends_after_its_maximum_duration(payments: Payments) -> None:
    payment_id = await payments.pending_payment()
    async with payments.channel() as channel:
        stream = watch(channel, payment_id)
        updates = []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for update in stream:
                updates.append(update.payment.status)
    assert updates == [payments_pb2.PAYMENT_STATUS_PENDING]
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ended.value.details() == "the watch lasted its 1.5 s; watch again to go on"


async def test_a_commit_wakes_only_the_watchers_of_the_payment_it_changed(payments: Payments) -> None:
    watchers = grpc_api.Watchers(max_per_client=10)
    with watchers.watching("a", "c1") as a, watchers.watching("b", "c2") as b, watchers.watching("a", "c2") as a2:
        watchers.committed(SimpleNamespace(payments=SimpleNamespace(changed={"a"})))  # type: ignore[arg-type]
        assert (a.is_set(), a2.is_set(), b.is_set()) == (True, True, False)
    # And from a real commit: cancelling a payment wakes its watcher.
    payment_id = await payments.pending_payment()
    async with payments.channel() as channel:
        stream = watch(channel, payment_id)
        assert (await stream.read()).payment.status == payments_pb2.PAYMENT_STATUS_PENDING
        await payments.database.retrying(lambda unit: handlers.cancel_payment(unit, payment_id, "no", OPS))
        assert (await stream.read()).payment.status == payments_pb2.PAYMENT_STATUS_CANCELLING
        stream.cancel()


async def test_a_database_outage_ends_the_stream_with_unavailable(
    payments: Payments, monkeypatch: pytest.MonkeyPatch
) -> None:
    payment_id = await payments.pending_payment()

    async def unavailable(*_args: object) -> list[Any]:
        raise sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(views, "history_after", unavailable)
    async with payments.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await watch(channel, payment_id).read()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "database is unavailable" in (refused.value.details() or "")
