"""JetStream stream snapshots and restores through the raw ``$JS.API`` requests (nats-py has no
helper for them).

A snapshot is the stream's store as the server writes it (an s2-compressed tar, messages and
consumers with their acknowledgement state), delivered in chunks to an inbox of ours; each chunk
is acknowledged (the server's flow control) and an empty message ends it. A restore sends the
same chunks back to a subject the server names, then an empty message, and the server answers
with the restored stream's state. The stream must not exist when it is restored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

API = "$JS.API"
CHUNK_SIZE_BYTES = 128 * 1024
REQUEST_TIMEOUT_S = 10.0
# A chunk not arriving for this long ends the snapshot as failed.
CHUNK_TIMEOUT_S = 30.0
# The server rebuilds the stream once it has every chunk: that can take a while for a large one.
RESTORE_FINISH_TIMEOUT_S = 600.0


class SnapshotError(Exception):
    """JetStream refused or broke off a snapshot or a restore; the message says which and why."""


@dataclass(frozen=True)
class Snapshot:
    stream: str
    file: Path
    bytes: int
    sha256: str
    # The stream's configuration and state when the snapshot began (JetStream's own JSON).
    config: dict[str, Any]
    state: dict[str, Any]


async def api_request(client: NatsClient, subject: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    reply = await client.request(f"{API}.{subject}", json.dumps(body).encode(), timeout=timeout_s)
    return _answer(reply, subject)


def _answer(reply: Msg, what: str) -> dict[str, Any]:
    """JetStream's JSON answer (empty for an empty reply); its error raised as SnapshotError."""
    if not reply.data:
        return {}
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        error = answer["error"]
        raise SnapshotError(f"{what}: {error.get('description', error)} (code {error.get('code')})")
    return answer


async def stream_names(client: NatsClient) -> list[str]:
    names: list[str] = []
    while True:
        page = await api_request(client, "STREAM.NAMES", {"offset": len(names)}, REQUEST_TIMEOUT_S)
        names += page.get("streams") or []
        if not page.get("streams") or len(names) >= page.get("total", 0):
            return sorted(names)


async def snapshot(client: NatsClient, stream: str, file: Path) -> Snapshot:
    """Write one stream's snapshot (with its consumers) to file; its sha256 is taken as it is written."""
    inbox = client.new_inbox()
    chunks: asyncio.Queue[Msg] = asyncio.Queue()

    async def receive(message: Msg) -> None:
        await chunks.put(message)

    subscription = await client.subscribe(inbox, cb=receive)
    digest, size = hashlib.sha256(), 0
    try:
        answer = await api_request(
            client,
            f"STREAM.SNAPSHOT.{stream}",
            {"deliver_subject": inbox, "no_consumers": False, "chunk_size": CHUNK_SIZE_BYTES, "jsck": False},
            REQUEST_TIMEOUT_S,
        )
        with file.open("wb") as out:
            while True:
                try:
                    message = await asyncio.wait_for(chunks.get(), CHUNK_TIMEOUT_S)
                except TimeoutError:
                    raise SnapshotError(f"snapshot of {stream}: no chunk for {CHUNK_TIMEOUT_S:g} s") from None
                status = (message.headers or {}).get("Status")
                if status and status not in ("204",):
                    description = (message.headers or {}).get("Description", "")
                    raise SnapshotError(f"snapshot of {stream} broke off: {status} {description}".rstrip())
                if not message.data:
                    break
                out.write(message.data)
                digest.update(message.data)
                size += len(message.data)
                if message.reply:
                    await client.publish(message.reply, b"")
            out.flush()
    finally:
        await subscription.unsubscribe()
    return Snapshot(stream, file, size, digest.hexdigest(), answer["config"], answer["state"])


async def restore(
    client: NatsClient, stream: str, file: Path, config: dict[str, Any], state: dict[str, Any]
) -> dict[str, Any]:
    """Restore a stream (absent on the server) from its snapshot file; returns its state after."""
    answer = await api_request(
        client, f"STREAM.RESTORE.{stream}", {"config": config, "state": state}, REQUEST_TIMEOUT_S
    )
    deliver = answer["deliver_subject"]
    with file.open("rb") as data:
        while chunk := data.read(CHUNK_SIZE_BYTES):
            reply = await client.request(deliver, chunk, timeout=REQUEST_TIMEOUT_S)
            _answer(reply, f"restore of {stream}")
    reply = await client.request(deliver, b"", timeout=RESTORE_FINISH_TIMEOUT_S)
    restored: dict[str, Any] = _answer(reply, f"restore of {stream}").get("state", {})
    return restored


async def delete_stream(client: NatsClient, stream: str) -> None:
    await api_request(client, f"STREAM.DELETE.{stream}", {}, REQUEST_TIMEOUT_S)


async def last_sequence(client: NatsClient, stream: str) -> int:
    info = await api_request(client, f"STREAM.INFO.{stream}", {}, REQUEST_TIMEOUT_S)
    return int(info["state"]["last_seq"])


async def delete_after(client: NatsClient, stream: str, sequence: int) -> int:
    """Delete the stream's messages after sequence (events whose origin a restored database does
    not have); returns how many there were."""
    last = await last_sequence(client, stream)
    deleted = 0
    for seq in range(sequence + 1, last + 1):
        try:
            await api_request(client, f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True}, REQUEST_TIMEOUT_S)
            deleted += 1
        except SnapshotError as error:
            if "no message found" not in str(error) and "not found" not in str(error):
                raise  # else already gone: a hole the stream had, or expired
    return deleted


async def rewind_consumer(client: NatsClient, stream: str, consumer: str, start_sequence: int) -> None:
    """Recreate a durable consumer, as configured, to deliver again from start_sequence: a
    consumer's position cannot be moved back, so it is deleted and created anew."""
    info = await api_request(client, f"CONSUMER.INFO.{stream}.{consumer}", {}, REQUEST_TIMEOUT_S)
    config = dict(info["config"])
    config.update(deliver_policy="by_start_sequence", opt_start_seq=max(1, start_sequence))
    config.pop("opt_start_time", None)
    await api_request(client, f"CONSUMER.DELETE.{stream}.{consumer}", {}, REQUEST_TIMEOUT_S)
    await api_request(
        client, f"CONSUMER.CREATE.{stream}.{consumer}", {"stream_name": stream, "config": config}, REQUEST_TIMEOUT_S
    )


async def durable_consumers(client: NatsClient, stream: str) -> dict[str, dict[str, Any]]:
    """Each durable consumer of a stream, by name, with its info (JetStream's own JSON)."""
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while True:
        page = await api_request(client, f"CONSUMER.LIST.{stream}", {"offset": offset}, REQUEST_TIMEOUT_S)
        consumers = page.get("consumers") or []
        offset += len(consumers)
        found |= {info["name"]: info for info in consumers if info["config"].get("durable_name")}
        if not consumers or offset >= page.get("total", 0):
            return found


async def pause_consumer(client: NatsClient, stream: str, consumer: str, until: str | None) -> None:
    """Stop a consumer's deliveries until the given RFC 3339 time (a limit, should the caller
    never come back), or resume them now (None)."""
    body = {"pause_until": until} if until else {}
    answer = await api_request(client, f"CONSUMER.PAUSE.{stream}.{consumer}", body, REQUEST_TIMEOUT_S)
    if bool(answer.get("paused")) != bool(until):
        state = "paused" if answer.get("paused") else "not paused (a time already past, by NATS' clock?)"
        raise SnapshotError(f"{stream} > {consumer}: {state} after asking to {'pause' if until else 'resume'}")
