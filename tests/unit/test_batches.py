"""The atomic batch helper: the headers it sends and how it reads JetStream's answer (a fake
connection; the real server's behaviour is in tests/integration/test_messaging.py and
test_nats_cluster.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NoStreamResponseError

from paysaga.runtime.messaging.batches import AtomicBatchRefused, Outgoing, publish_atomic


@dataclass
class Reply:
    data: bytes


@dataclass
class FakeConnection:
    answer: dict[str, Any] | bytes | Exception
    sent: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self.sent.append((subject, headers, False))

    async def request(self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]) -> Reply:  # noqa: ASYNC109 - nats-py's signature
        self.sent.append((subject, headers, True))
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, bytes):
            return Reply(self.answer)
        answer = dict(self.answer)
        if answer.get("batch") == "<the batch>":
            answer["batch"] = headers["Nats-Batch-Id"]
        return Reply(json.dumps(answer).encode())


def messages(count: int) -> list[Outgoing]:
    return [Outgoing(f"paysaga.events.ledger.standard.E{index}", b"x", f"id-{index}") for index in range(count)]


async def test_a_batch_is_sent_in_order_with_its_ids_and_committed_by_a_request_on_its_last_message() -> None:
    connection = FakeConnection({"stream": "LEDGER_EVENTS", "seq": 3, "batch": "<the batch>", "count": 3})
    await publish_atomic(cast(NatsClient, connection), messages(3), timeout_s=1)

    assert [subject for subject, _, _ in connection.sent] == [message.subject for message in messages(3)]
    assert [waits for _, _, waits in connection.sent] == [False, False, True]
    headers = [sent_headers for _, sent_headers, _ in connection.sent]
    assert [header["Nats-Msg-Id"] for header in headers] == ["id-0", "id-1", "id-2"]
    assert [header["Nats-Batch-Sequence"] for header in headers] == ["1", "2", "3"]
    assert len({header["Nats-Batch-Id"] for header in headers}) == 1
    assert [header.get("Nats-Batch-Commit") for header in headers] == [None, None, "1"]


@pytest.mark.parametrize(
    "answer",
    [
        {
            "error": {
                "code": 400,
                "err_code": 10201,
                "description": "atomic publish batch contains duplicate message id",
            }
        },
        {"stream": "LEDGER_EVENTS", "seq": 3},  # a plain acknowledgement: a server that ignored the batch
        {"stream": "LEDGER_EVENTS", "seq": 3, "batch": "<the batch>", "count": 2},  # not all of it
        b"not json",
    ],
)
async def test_an_answer_that_is_not_the_whole_batch_stored_is_a_refusal(answer: dict[str, Any] | bytes) -> None:
    with pytest.raises(AtomicBatchRefused):
        await publish_atomic(cast(NatsClient, FakeConnection(answer)), messages(3), timeout_s=1)


async def test_no_stream_for_the_subjects_is_said_as_a_single_publish_says_it() -> None:
    connection = FakeConnection(nats.errors.NoRespondersError())
    with pytest.raises(NoStreamResponseError):
        await publish_atomic(cast(NatsClient, connection), messages(2), timeout_s=1)


async def test_a_batch_beyond_jetstreams_limit_is_refused_before_anything_is_sent() -> None:
    connection = FakeConnection({})
    with pytest.raises(ValueError, match="1 to 1000"):
        await publish_atomic(cast(NatsClient, connection), messages(1001), timeout_s=1)
    assert connection.sent == []
