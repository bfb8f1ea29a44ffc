"""The backup's parts against the real things: a database copied while written to and put back
on SQLite and PostgreSQL (outbox rows re-armed from a time), and JetStream streams snapshotted
with their consumers, restored, trimmed after a sequence and their consumers rewound, on a real
nats-server through the raw $JS.API."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from nats.js.api import AckPolicy, ConsumerConfig

import services.ledger
from paysaga.ops.backup import databases, jetstream
from paysaga.ops.backup.manifest import ManifestError
from paysaga.ops.backup.procedures import back_up, verify
from paysaga.ops.cluster.localcluster import LocalCluster
from paysaga.runtime.messaging import streams
from paysaga.runtime.storage import migrations
from paysaga.runtime.storage.database import create_engine
from paysaga.runtime.storage.unit_of_work import messaging_tables

EVENTS = 20
LEDGER_MIGRATIONS = Path(services.ledger.__file__).parent / "migrations"


async def write_outbox(url: str, published: list[dt.datetime | None]) -> None:
    engine = create_engine(url)
    try:
        await migrations.upgrade(engine, LEDGER_MIGRATIONS)
        outbox, _ = messaging_tables(sa.MetaData())
        async with engine.begin() as connection:
            for at in published:
                await connection.execute(
                    outbox.insert().values(
                        event_id=str(uuid.uuid4()),
                        event_type="FundsHeld",
                        saga_id=str(uuid.uuid4()),
                        subject="paysaga.events.ledger.standard.FundsHeld",
                        payload=b"x",
                        created_at=dt.datetime.now(dt.UTC),
                        published_at=at,
                    )
                )
    finally:
        await engine.dispose()


async def unpublished(url: str) -> int:
    outbox, _ = messaging_tables(sa.MetaData())
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
            return int((await connection.execute(query)).scalar_one())
    finally:
        await engine.dispose()


async def test_a_database_copy_reads_back_and_restores_over_a_changed_database(
    database_url: str, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    old, recent = now - dt.timedelta(minutes=5), now - dt.timedelta(seconds=1)
    await write_outbox(database_url, [old, old, recent, None])
    strategy = databases.strategy_for(database_url)
    copy = tmp_path / f"ledger{strategy.suffix}"
    await databases.copy(database_url, copy)
    strategy.check(copy)
    await write_outbox(database_url, [None] * 5)  # written after the copy: gone once restored
    assert await unpublished(database_url) == 6

    strategy.restore(copy, database_url)
    assert await unpublished(database_url) == 1
    # What was published since a moment is marked to be sent again; older rows stay as they are.
    assert await databases.rearm_outbox(database_url, now - dt.timedelta(seconds=30)) == 1
    assert await unpublished(database_url) == 2


def test_a_damaged_copy_fails_its_check(tmp_path: Path) -> None:
    broken = tmp_path / "ledger.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    with pytest.raises(databases.DatabaseBackupError):
        databases.strategy_of_kind("sqlite").check(broken)
    with pytest.raises(ManifestError, match="no manifest"):
        verify(tmp_path)


async def test_a_stream_snapshot_restores_messages_and_consumers_then_trims_and_rewinds(
    nats_cluster: LocalCluster, tmp_path: Path
) -> None:
    spec = streams.owned_streams("ledger")[0]
    ops = await streams.connect(nats_cluster.nats_url, nats_cluster.tls_files("ops"), name="ops", timeout_s=10)
    ledger = await streams.connect(nats_cluster.nats_url, nats_cluster.tls_files("ledger"), name="ledger", timeout_s=10)
    try:
        await streams.ensure_stream(ops.jetstream(), spec, 1)
        for index in range(EVENTS):
            subject = "paysaga.events.ledger.standard.FundsHeld"
            await ledger.jetstream().publish(subject, f"{index}".encode(), headers={"Nats-Msg-Id": str(uuid.uuid4())})
        consumer = ConsumerConfig(durable_name="payments-from-ledger-standard", ack_policy=AckPolicy.EXPLICIT)
        await ops.jetstream().add_consumer(spec.name, consumer)
        assert spec.name in await jetstream.stream_names(ops)

        taken = await jetstream.snapshot(ops, spec.name, tmp_path / "stream.tar.s2")
        assert taken.bytes > 0 and taken.state["messages"] == EVENTS
        with pytest.raises(jetstream.SnapshotError, match=r"already in use|exists"):
            await jetstream.restore(ops, spec.name, taken.file, taken.config, taken.state)
        await jetstream.delete_stream(ops, spec.name)
        restored = await jetstream.restore(ops, spec.name, taken.file, taken.config, taken.state)
        assert restored["messages"] == EVENTS
        assert list(await jetstream.durable_consumers(ops, spec.name)) == ["payments-from-ledger-standard"]

        assert await jetstream.delete_after(ops, spec.name, 15) == EVENTS - 15
        assert (await ops.jetstream().stream_info(spec.name)).state.messages == 15
        await jetstream.rewind_consumer(ops, spec.name, "payments-from-ledger-standard", 11)
        info = await ops.jetstream().consumer_info(spec.name, "payments-from-ledger-standard")
        assert info.num_pending == 5  # sequences 11 to 15
    finally:
        await ledger.close()
        await ops.close()


async def test_a_backup_lets_busy_handlers_acknowledge_while_it_copies_and_keeps_the_floor_from_before(
    nats_cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event delivered before the pause and acknowledged while the databases are copied (a
    handler that was busy): the backup goes on, records the floor from before (the restored
    consumer delivers that event again; the restored inbox skips it if its effect was copied),
    and resumes the consumer."""
    spec = streams.owned_streams("ledger")[0]
    durable = "payments-from-ledger-priority"
    ops = await streams.connect(nats_cluster.nats_url, nats_cluster.tls_files("ops"), name="ops", timeout_s=10)
    ledger = await streams.connect(nats_cluster.nats_url, nats_cluster.tls_files("ledger"), name="ledger", timeout_s=10)
    payments = await streams.connect(
        nats_cluster.nats_url, nats_cluster.tls_files("payments"), name="payments", timeout_s=10
    )
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    await write_outbox(url, [])
    try:
        with contextlib.suppress(jetstream.SnapshotError):  # left by another test of this module
            await jetstream.delete_stream(ops, spec.name)
        await streams.ensure_stream(ops.jetstream(), spec, 1)
        for _ in range(3):
            subject = "paysaga.events.ledger.priority.FundsHeld"
            await ledger.jetstream().publish(subject, b"x", headers={"Nats-Msg-Id": str(uuid.uuid4())})
        config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT)
        await ops.jetstream().add_consumer(spec.name, config)
        subscription = await payments.jetstream().pull_subscribe_bind(durable, spec.name)
        [busy] = await subscription.fetch(1, timeout=5)

        original = databases.copy

        async def copy_while_a_handler_acknowledges(database_url: str, file: Path) -> None:
            await busy.ack_sync(timeout=5)
            await original(database_url, file)

        monkeypatch.setattr(databases, "copy", copy_while_a_handler_acknowledges)
        manifest = await back_up(ops, tmp_path / "backup", {"ledger": url})

        [entry] = [stream for stream in manifest.streams if stream.name == spec.name]
        assert entry.consumer_floors == {durable: 0}
        info = await ops.jetstream().consumer_info(spec.name, durable)
        assert info.ack_floor is not None and info.ack_floor.stream_seq == 1
        assert not (await jetstream.api_request(ops, f"CONSUMER.INFO.{spec.name}.{durable}", {}, 5)).get("paused")
    finally:
        for client in (payments, ledger, ops):
            await client.close()
