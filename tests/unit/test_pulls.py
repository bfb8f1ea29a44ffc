"""How a Puller keeps its pull request open across batches, and when it asks again (a fake
connection that records the requests; the real server's side is in
tests/integration/test_messaging.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from paysaga.runtime.messaging import pulls
from paysaga.runtime.messaging.pulls import Puller, PullRefused

Callback = Callable[[Msg], Awaitable[None]]
EVENT_SUBJECT = "paysaga.events.ledger.standard.FundsHeld"
# A delivered message's reply subject ends with how many more the consumer has pending.
ACK_SUBJECT = "$JS.ACK.LEDGER_EVENTS.payments-from-ledger-standard.1.1.1.1.{pending}"


@dataclass
class FakeConnection:
    requests: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    callback: Callback | None = None
    subscribed: str = ""

    def new_inbox(self) -> str:
        return "_INBOX.paysaga.service.payments.abc"

    async def subscribe(self, subject: str, cb: Callback) -> SimpleNamespace:
        self.subscribed, self.callback = subject, cb

        async def unsubscribe() -> None:
            self.callback = None

        return SimpleNamespace(unsubscribe=unsubscribe)

    async def publish(self, subject: str, payload: bytes, reply: str) -> None:
        self.requests.append((subject, json.loads(payload), reply))

    async def deliver(self, count: int = 1, pending_after: int = 0) -> list[Msg]:
        """Pulled messages, as the server delivers them: on their stream subject, each saying how
        many more are pending (pending_after once these are delivered)."""
        sent = [
            Msg(cast(Any, self), subject=EVENT_SUBJECT, reply=ACK_SUBJECT.format(pending=pending), data=b"event")
            for pending in range(pending_after + count - 1, pending_after - 1, -1)
        ]
        for message in sent:
            await self._receive(message)
        return sent

    async def status(self, reply: str, status: str, description: str) -> None:
        """A status for a request, on its reply subject."""
        await self._receive(Msg(cast(Any, self), subject=reply, headers={"Status": status, "Description": description}))

    async def _receive(self, message: Msg) -> None:
        assert self.callback is not None
        await self.callback(message)


async def opened(window: int = 4) -> tuple[Puller, FakeConnection]:
    connection = FakeConnection()
    jetstream = cast(JetStreamContext, SimpleNamespace(_nc=connection, _prefix="$JS.API"))
    puller = Puller(jetstream, "LEDGER_EVENTS", "payments-from-ledger-standard", window)
    await puller.open()
    return puller, connection


async def test_one_request_serves_batch_after_batch_until_its_window_is_filled() -> None:
    puller, connection = await opened(window=4)
    assert await puller.next_batch(0.01) == []
    [(subject, request, _)] = connection.requests
    assert subject == "$JS.API.CONSUMER.MSG.NEXT.LEDGER_EVENTS.payments-from-ledger-standard"
    assert request == {"batch": 4, "expires": int(pulls.PULL_EXPIRES_S * 1e9)}
    assert connection.subscribed == "_INBOX.paysaga.service.payments.abc.*"

    first = await connection.deliver()
    assert await puller.next_batch(0.01) == first
    second = await connection.deliver(2)
    assert await puller.next_batch(0.01) == second
    assert len(connection.requests) == 1  # still the same request: it asked for 4, 3 came

    last = await connection.deliver()
    assert await puller.next_batch(0.01) == last
    assert await puller.next_batch(0.01) == []
    assert len(connection.requests) == 2  # filled: asked again


async def test_a_batch_never_holds_more_than_the_window() -> None:
    puller, connection = await opened(window=2)
    await puller.next_batch(0.01)
    delivered = await connection.deliver(3)  # e.g. late ones of an expired request, and this one's
    assert await puller.next_batch(0.01) == delivered[:2]
    assert await puller.next_batch(0.01) == delivered[2:]


async def test_a_burst_the_server_has_not_finished_sending_is_waited_for_briefly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pulls, "SETTLE_MAX_S", 0.3)  # far longer than the test's own steps take
    puller, connection = await opened(window=8)
    await puller.next_batch(0.01)
    first = await connection.deliver(2, pending_after=3)  # the rest comes through a later read
    taking = asyncio.create_task(puller.next_batch(0.01))
    await asyncio.sleep(0.02)
    assert not taking.done()
    rest = await connection.deliver(3)
    assert await taking == first + rest  # one batch, so one transaction

    # More pending than ever comes (the server is slow, or another consumer took them): the
    # batch is taken as it is, SETTLE_MAX_S later.
    alone = await connection.deliver(1, pending_after=5)
    assert await asyncio.wait_for(puller.next_batch(0.01), timeout=5) == alone
    # A window's worth is taken at once, whatever is pending.
    full = await connection.deliver(8, pending_after=5)
    assert await asyncio.wait_for(puller.next_batch(0.01), timeout=0.1) == full


async def test_the_expiry_of_the_open_request_asks_again_and_a_late_one_of_an_earlier_request_does_not() -> None:
    puller, connection = await opened()
    await puller.next_batch(0.01)
    first_reply = connection.requests[-1][2]
    await connection.status(first_reply, "408", "Request Timeout")
    assert await puller.next_batch(0.01) == []
    assert len(connection.requests) == 2
    await connection.status(first_reply, "408", "Request Timeout")  # late: not about the open one
    await connection.status(connection.requests[-1][2], "100", "Idle Heartbeat")
    assert await puller.next_batch(0.01) == []
    assert len(connection.requests) == 2


async def test_a_request_that_expires_while_waiting_is_replaced_at_once() -> None:
    puller, connection = await opened()
    waiting = asyncio.create_task(puller.next_batch(30))
    await asyncio.sleep(0.01)
    await connection.status(connection.requests[-1][2], "408", "Request Timeout")
    await asyncio.sleep(0.01)
    assert len(connection.requests) == 2  # not only when the 30 s are over
    came = await connection.deliver()
    assert await asyncio.wait_for(waiting, timeout=5) == came


async def test_a_request_the_server_lost_is_replaced_after_its_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pulls, "PULL_EXPIRES_S", 0.02)
    monkeypatch.setattr(pulls, "LOST_AFTER_S", 0.02)
    puller, connection = await opened()
    assert await puller.next_batch(0.01) == []
    assert len(connection.requests) == 1
    assert await puller.next_batch(0.1) == []  # nothing came, not even its expiry: asked again
    assert len(connection.requests) >= 2


async def test_a_leadership_change_asks_again_and_a_deleted_consumer_is_refused_after_what_came() -> None:
    puller, connection = await opened()
    await puller.next_batch(0.01)
    await connection.status(connection.requests[-1][2], "409", "Leadership Change")
    assert await puller.next_batch(0) == []
    assert len(connection.requests) == 1  # not at once
    assert await puller.next_batch(pulls.CONFLICT_PAUSE_S * 3) == []
    assert len(connection.requests) == 2

    came = await connection.deliver()
    await connection.status(connection.requests[-1][2], "409", "Consumer Deleted")
    assert await puller.next_batch(0.01) == came
    with pytest.raises(PullRefused, match="409 Consumer Deleted"):
        await puller.next_batch(0.01)


async def test_close_stops_listening() -> None:
    puller, connection = await opened()
    await puller.close()
    assert connection.callback is None
    await puller.close()  # twice is harmless
