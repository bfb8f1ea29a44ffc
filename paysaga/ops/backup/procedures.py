"""Taking a backup of a running cluster, checking one, and restoring a cluster from one.

A backup is taken in an order that lets a restore put every database and stream back in step:

1. Every durable consumer is paused, and its acknowledgement floor read: everything up to it was
   handled, its effects committed.
2. Each service's database is copied (online: the services keep taking requests), just after
   reading the last sequence of the service's events stream: every event up to that sequence
   came from the copy's own outbox. As nothing is delivered meanwhile, no copy can hold the
   effect of an event published after another copy was taken (a handler busy since before the
   pause handles an event older than every copy). The consumers are checked to have stayed
   paused, then resume (a pause of about half a second on SQLite; sagas wait, none fails).
3. Every stream is snapshotted (messages and consumers).

A restore (services stopped, NATS running) puts the streams and the databases back, then removes
from each service's events stream what came after its database's copy (the database knows
nothing of it), marks that database's outbox rows published since then as not published (its
relay sends them again), and has every durable consumer deliver again from its floor (the
databases' inboxes skip what they handled already). Nothing is half-applied: a saga whose steps
straddle the copies carries on from where the databases are. What was committed after the backup
is lost: the backup's age is the data at risk (RPO).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NatsClient

from paysaga.ops.backup import databases, jetstream
from paysaga.ops.backup.manifest import (
    DatabaseEntry,
    Manifest,
    ManifestError,
    StreamEntry,
    check_files,
    parse_timestamp,
    sha256_of,
    timestamp,
)
from paysaga.runtime.messaging.streams import owned_streams
from paysaga.runtime.messaging.windows import STREAM_MAX_AGE_S

log = logging.getLogger(__name__)
# Published-at times come from each service's clock, the backup's times from the tool's: rows
# published this close before the backup's mark are sent again too (a duplicate is skipped).
CLOCK_MARGIN_S = 5.0
STREAMS_DIRECTORY = "streams"
# While the databases are copied, no consumer delivers: no service acts on an event published
# after a copy began, so copies taken one after another still agree with each other. The pause
# lifts itself after PAUSE_MAX_S should the backup die.
PAUSE_MAX_S = 120.0
# A restore of an older backup cannot put the streams back as they were: JetStream drops events
# older than the streams' maximum age as soon as they are restored.
RESTORABLE_AGE_MAX_S = STREAM_MAX_AGE_S - 24 * 3600


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def back_up(client: NatsClient, target: Path, database_urls: Mapping[str, str]) -> Manifest:
    """Take a backup into target (a new or empty directory) and check it; returns its manifest."""
    _prepare(target)
    started = _now()
    names = await jetstream.stream_names(client)
    consumers = {name: await jetstream.durable_consumers(client, name) for name in names}
    paused = [(stream, consumer) for stream, found in consumers.items() for consumer in found]
    until = timestamp(_now() + dt.timedelta(seconds=PAUSE_MAX_S))
    try:
        for stream, consumer in paused:
            await jetstream.pause_consumer(client, stream, consumer, until)
        before = await _positions(client, paused)
        copied = [await _copy(client, target, service, url, names) for service, url in database_urls.items()]
        # Handlers busy since before the pause may acknowledge meanwhile (floors move); nothing
        # may have been delivered.
        after = await _positions(client, paused)
        if any(after[key][1] != delivered for key, (_, delivered) in before.items()):
            raise ManifestError("a consumer delivered while the databases were copied (its pause lapsed): no backup")
    finally:
        await _resume(client, paused)
    snapshots = []
    for name in names:
        file = target / STREAMS_DIRECTORY / f"{name}.tar.s2"
        taken = await jetstream.snapshot(client, name, file)
        snapshots.append(
            StreamEntry(
                name=name,
                file=f"{STREAMS_DIRECTORY}/{file.name}",
                bytes=taken.bytes,
                sha256=taken.sha256,
                config=taken.config,
                state=taken.state,
                consumer_floors={consumer: before[(name, consumer)][0] for consumer in consumers[name]},
            )
        )
    manifest = Manifest(timestamp(started), timestamp(_now()), copied, snapshots)
    manifest.write(target)
    verify(target)
    return manifest


async def _positions(client: NatsClient, paused: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """Each paused consumer's acknowledgement floor and last delivered sequence; raises unless
    every one is paused. Everything up to a floor was handled and its effects committed."""
    positions = {}
    for stream, consumer in paused:
        info = await jetstream.api_request(
            client, f"CONSUMER.INFO.{stream}.{consumer}", {}, jetstream.REQUEST_TIMEOUT_S
        )
        if not info.get("paused"):
            raise ManifestError(f"{stream} > {consumer} is not paused (is the backup host's clock behind NATS'?)")
        floor = int((info.get("ack_floor") or {}).get("stream_seq") or 0)
        positions[(stream, consumer)] = (floor, int((info.get("delivered") or {}).get("stream_seq") or 0))
    return positions


async def _resume(client: NatsClient, paused: list[tuple[str, str]]) -> None:
    """Resume every paused consumer, each whatever happens to the others; then raise the first
    failure, if any."""
    failures = []
    for stream, consumer in paused:
        try:
            await jetstream.pause_consumer(client, stream, consumer, None)
        except Exception as error:  # noqa: BLE001 - the others are resumed first; raised below
            failures.append(error)
    if failures:
        raise failures[0]


async def _copy(client: NatsClient, target: Path, service: str, url: str, names: list[str]) -> DatabaseEntry:
    strategy = databases.strategy_for(url)
    events = owned_streams(service)[0].name
    last_seq = await jetstream.last_sequence(client, events) if events in names else 0
    read_at = _now()
    file = target / f"{service}{strategy.suffix}"
    await databases.copy(url, file)
    return DatabaseEntry(
        service=service,
        kind=strategy.kind,
        file=file.name,
        bytes=file.stat().st_size,
        sha256=sha256_of(file),
        events_stream=events if events in names else None,
        events_last_seq=last_seq,
        sequence_read_at=timestamp(read_at),
        copied_at=timestamp(_now()),
    )


def _prepare(target: Path) -> None:
    if target.exists() and any(target.iterdir()):
        raise ManifestError(f"{target} is not empty: a backup goes into a directory of its own")
    (target / STREAMS_DIRECTORY).mkdir(parents=True, exist_ok=True)


def verify(directory: Path) -> Manifest:
    """Check a backup: every file present with the manifest's size and sha256, and every database
    copy readable by its own tool. Raises ManifestError with everything found wrong."""
    manifest = Manifest.read(directory)
    problems = check_files(directory, manifest)
    if not problems:
        for entry in manifest.databases:
            try:
                databases.strategy_of_kind(entry.kind).check(directory / entry.file)
            except databases.DatabaseBackupError as error:
                problems.append(f"{entry.file}: {error}")
    if problems:
        raise ManifestError(f"{directory} does not match its manifest:\n  " + "\n  ".join(problems))
    return manifest


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    messages: dict[str, int]  # per stream, after the restore
    removed: dict[str, int]  # events after a database's copy, per stream
    rearmed: dict[str, int]  # outbox rows to send again, per service
    elapsed_s: float


async def restore(
    client: NatsClient,
    source: Path,
    database_urls: Mapping[str, str],
    *,
    replace_streams: bool = False,
    say: Callable[[str], None] = lambda _line: None,
) -> Restored:
    """Rebuild the streams and databases from a backup; the services must be stopped."""
    started = time.monotonic()
    manifest = verify(source)
    missing = [entry.service for entry in manifest.databases if entry.service not in database_urls]
    if missing:
        raise ManifestError(f"the backup has databases for {', '.join(missing)}: say where each goes")
    for entry in manifest.databases:
        kind = databases.strategy_for(database_urls[entry.service]).kind
        if kind != entry.kind:
            raise ManifestError(f"{entry.service}: the backup holds a {entry.kind} database, the URL names {kind}")
    age_s = (_now() - parse_timestamp(manifest.started_at)).total_seconds()
    if age_s > RESTORABLE_AGE_MAX_S:
        raise ManifestError(
            f"the backup is {age_s / 86400:.1f} days old: the streams keep events {STREAM_MAX_AGE_S / 86400:g} days, "
            "so its events would expire as they are restored; restore a newer one"
        )
    existing = set(await jetstream.stream_names(client)) & {entry.name for entry in manifest.streams}
    if existing and not replace_streams:
        raise ManifestError(
            f"streams already on NATS: {', '.join(sorted(existing))}; restoring replaces them (--replace-streams)"
        )
    for name in sorted(existing):
        await jetstream.delete_stream(client, name)
        say(f"deleted stream {name}")
    messages = {}
    for stream in manifest.streams:
        state = await jetstream.restore(client, stream.name, source / stream.file, stream.config, stream.state)
        messages[stream.name] = int(state.get("messages", 0))
        say(f"restored stream {stream.name}: {messages[stream.name]} messages")
    removed, rearmed = {}, {}
    for entry in manifest.databases:
        url = database_urls[entry.service]
        await asyncio.to_thread(databases.strategy_of_kind(entry.kind).restore, source / entry.file, url)
        if entry.events_stream is not None:
            removed[entry.events_stream] = await jetstream.delete_after(
                client, entry.events_stream, entry.events_last_seq
            )
        since = parse_timestamp(entry.sequence_read_at) - dt.timedelta(seconds=CLOCK_MARGIN_S)
        rearmed[entry.service] = await databases.rearm_outbox(url, since)
        say(
            f"restored database {entry.service} (copied {entry.copied_at}); "
            f"{removed.get(entry.events_stream or '', 0)} later events removed, "
            f"{rearmed[entry.service]} events to send again"
        )
    for stream in manifest.streams:
        # A consumer created after the floors were read delivers everything again (its service's
        # inbox skips what it handled).
        restored = await jetstream.durable_consumers(client, stream.name)
        for consumer in restored:
            await jetstream.rewind_consumer(client, stream.name, consumer, stream.consumer_floors.get(consumer, 0) + 1)
        if restored:
            say(f"consumers of {stream.name} deliver again from their floors: {len(restored)}")
    return Restored(manifest, messages, removed, rearmed, time.monotonic() - started)
