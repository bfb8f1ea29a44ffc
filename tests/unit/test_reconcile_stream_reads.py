"""A reconciliation's read of a stream when JetStream answers "unavailable" for a while (a
clustered stream electing its leader): tried again, never counted twice, and given up on in
bounded time. The NATS client is a fake here; reading a real stream is in tests/e2e/test_reconcile.py."""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.errors import NotFoundError, ServiceUnavailableError

from services.reconcile import sources

START = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


class FakeJetStream:
    def __init__(self, refusals: int, messages: list[str]) -> None:
        self.refusals = refusals
        self.messages = messages
        self.created = 0

    async def consumer_info(self, stream: str, name: str) -> None:
        raise NotFoundError

    async def add_consumer(self, stream: str, config: Any) -> SimpleNamespace:
        if self.refusals:
            self.refusals -= 1
            raise ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable")
        self.created += 1
        return SimpleNamespace(num_pending=len(self.messages))

    async def pull_subscribe_bind(self, consumer: str, stream: str) -> FakeJetStream:
        return self

    async def fetch(self, batch: int, timeout: float) -> list[str]:  # noqa: ASYNC109 - nats-py's signature
        return self.messages[:batch]

    async def unsubscribe(self) -> None:
        pass

    async def delete_consumer(self, stream: str, name: str) -> None:
        pass


class FakeClient:
    def __init__(self, jetstream: FakeJetStream, info_refusals: int = 0) -> None:
        self._jetstream = jetstream
        self.info_refusals = info_refusals

    async def request(self, subject: str, payload: bytes, timeout: float) -> SimpleNamespace:  # noqa: ASYNC109
        if self.info_refusals:
            self.info_refusals -= 1
            answer: dict[str, Any] = {"error": {"code": 503, "description": "JetStream system temporarily unavailable"}}
        else:
            state = {"messages": 2, "first_seq": 1, "last_seq": 2, "first_ts": "2026-12-01T00:00:00.000000000Z"}
            answer = {"state": state}
        return SimpleNamespace(data=json.dumps(answer).encode())

    def jetstream(self) -> FakeJetStream:
        return self._jetstream


async def _read(client: FakeClient, taken: list[Any]) -> str | None:
    fake: Any = client
    return await sources.retried_while_unavailable(
        lambda: sources.read_stream(
            fake, "PAYMENTS_EVENTS", "paysaga.events.payments.>", START, taken.append, covers=None
        )
    )


async def test_a_read_refused_as_unavailable_is_tried_again_and_takes_each_message_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sources, "UNAVAILABLE_PAUSE_S", 0.0)
    jetstream = FakeJetStream(refusals=2, messages=["first", "second"])
    taken: list[Any] = []

    assert await _read(FakeClient(jetstream, info_refusals=1), taken) is None
    assert taken == ["first", "second"]
    assert jetstream.created == 1


async def test_a_stream_unavailable_for_longer_than_the_retry_bound_is_named_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sources, "UNAVAILABLE_PAUSE_S", 0.01)
    monkeypatch.setattr(sources, "UNAVAILABLE_RETRY_S", 0.05)
    jetstream = FakeJetStream(refusals=10**6, messages=["first"])
    taken: list[Any] = []

    reason = await _read(FakeClient(jetstream), taken)
    assert reason is not None
    assert reason.startswith("reading stopped after 0 messages: ServiceUnavailableError")
    assert taken == []
