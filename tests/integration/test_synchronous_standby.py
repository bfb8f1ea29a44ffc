"""The storage backend's view of a synchronous standby, on a real primary and standby: writes are
admitted while the standby streams and refused at once when it is gone; and "replicated" (what the
relay asks before publishing what it read from an outbox) is false for a commit the standby has
not applied, and true again once it has caught up."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from paysaga.ops.cluster.localcluster import free_port
from paysaga.ops.cluster.postgres import ThrowawayPostgres, ThrowawayStandby, primary_and_standby
from paysaga.runtime.storage.backends import COMMIT_WAIT_MAX_S, PostgreSQLBackend, ReplicaUnavailable
from paysaga.runtime.storage.database import create_engine


@pytest.fixture(scope="module")
def replicated(postgres: ThrowawayPostgres) -> Iterator[tuple[ThrowawayPostgres, ThrowawayStandby]]:
    with primary_and_standby(free_port(), free_port()) as servers:
        yield servers


async def test_writes_wait_for_the_standby_or_are_refused_and_unapplied_commits_are_seen(
    replicated: tuple[ThrowawayPostgres, ThrowawayStandby],
) -> None:
    primary, standby = replicated
    engine = create_engine(primary.create_database("standby_backend"))
    backend = PostgreSQLBackend()
    try:
        await backend.admit_write(engine)
        assert await backend.replicated(engine)

        standby.halt(("fast",))
        with pytest.raises(ReplicaUnavailable, match="no synchronous standby is streaming"):
            await backend.replication(engine, max_age_s=0)
            await backend.admit_write(engine)
        # A commit the standby never saw (as one whose wait was given up): on the primary only.
        async with engine.begin() as connection:
            await connection.execute(sa.text("SET LOCAL synchronous_commit = local"))
            await connection.execute(sa.text("CREATE TABLE made_alone (id integer)"))
        started = time.monotonic()
        assert not await backend.replicated(engine)
        assert time.monotonic() - started < COMMIT_WAIT_MAX_S + 1

        standby.resume()
        deadline = time.monotonic() + 30
        while not await backend.replicated(engine):
            assert time.monotonic() < deadline, "the standby never caught up"
        await backend.replication(engine, max_age_s=0)
        await backend.admit_write(engine)
    finally:
        await engine.dispose()
