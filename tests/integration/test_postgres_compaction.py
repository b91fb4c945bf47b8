"""Compaction on PostgreSQL (schema v5): what the log holds for a finished saga, and a worker
killed between a saga's finishing commit and its compaction, or while the compaction waits on
a lock, loses nothing (the compaction is a second statement, after the transition is durable).

What every store promises about finished sagas is ``sagaway.testing.CompactionContract``, run on
PostgreSQL by tests/contract; these tests look at the tables."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from pg_compact_killer import T0

from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store.postgres import PostgresStore
from servers import POSTGRES_URL, fresh_pg_schema, pg_schema_url

KILLER = Path(__file__).with_name("pg_compact_killer.py")


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with fresh_pg_schema("compact") as name:
        yield name


async def _rows(schema: str, saga_id: str) -> tuple[int, int, bool]:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        steps = await conn.fetchval(
            f"SELECT count(*) FROM {schema}.sagaway_steps WHERE saga_id = $1", saga_id
        )
        events = await conn.fetchval(
            f"SELECT count(*) FROM {schema}.sagaway_events WHERE saga_id = $1", saga_id
        )
        packed = await conn.fetchval(
            f"SELECT packed IS NOT NULL FROM {schema}.sagaway_instances WHERE id = $1", saga_id
        )
        return steps, events, packed
    finally:
        await conn.close()


async def _running(store: PostgresStore, saga_id: str) -> SagaRecord:
    """A saga with two steps done, leased to e1; returns it as loaded."""
    await store.create(
        NewSaga(
            id=saga_id,
            name="shop",
            version=1,
            input={"order": saga_id},
            at=T0,
            status=SagaStatus.RUNNING,
            owner="e1",
            lease_expires_at=T0 + 1e6,
            events=[Event(T0, EventType.SAGA_STARTED)],
        )
    )
    for n, name in enumerate(("reserve", "pay")):
        at = T0 + 0.0123 * (n + 1)
        step = StepRecord(name, Phase.FORWARD, StepStatus.SUCCEEDED, 1, {"n": n}, None, False, at)
        events = [
            Event(at, EventType.STEP_STARTED, name, None, 1, "e1"),
            Event(at, EventType.STEP_SUCCEEDED, name, None, 1),
        ]
        await store.commit(saga_id, "e1", Change(steps=[step], events=events), at)
    return await store.get(saga_id)


async def test_a_finished_saga_is_packed_and_a_running_one_keeps_its_rows(schema: str) -> None:
    async with PostgresStore(pg_schema_url(schema)) as store:
        before = await _running(store, "done")
        await _running(store, "run")
        end = Event(T0 + 1, EventType.SAGA_SUCCEEDED)
        change = Change(status=SagaStatus.SUCCEEDED, events=[end], release_lease=True)
        await store.commit("done", "e1", change, T0 + 1)
        after = await store.get("done")
    assert after.history == [*before.history, end]
    assert after.steps == before.steps
    assert await _rows(schema, "done") == (0, 0, True)
    assert await _rows(schema, "run") == (2, 5, False)


async def _compaction_waiting(conn: asyncpg.Connection, schema: str) -> None:
    """Return once a statement waits on the lock ``conn`` holds: in this schema only the
    compaction's DELETE of the saga's step rows can. Read from ``pg_locks``, which is live:
    ``pg_stat_activity`` is a snapshot taken at its first read in a transaction, and ``conn``
    is in one (its lock), so a poll of it never sees a wait that began after the first poll.
    Polled: PostgreSQL tells no one when a statement starts waiting."""
    holder = conn.get_server_pid()
    async with asyncio.timeout(60):
        while not await conn.fetchval(  # noqa: ASYNC110 - the server's state, no event
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND $1 = ANY(pg_blocking_pids(pid))",
            holder,
        ):
            await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["before", "during"])
async def test_a_worker_killed_around_the_compaction_loses_nothing(
    schema: str, moment: str
) -> None:
    url = pg_schema_url(schema)
    async with PostgresStore(url) as store:
        before = await _running(store, "s")
    lock = await asyncpg.connect(POSTGRES_URL)
    try:
        if moment == "during":
            # A step row locked: the finishing commit writes no step row and gets through,
            # the compaction's DELETE of the saga's step rows waits here.
            await lock.execute("BEGIN")
            await lock.execute(
                f"SELECT 1 FROM {schema}.sagaway_steps WHERE saga_id = 's' FOR UPDATE"
            )
        child = await asyncio.create_subprocess_exec(
            sys.executable, str(KILLER), url, moment, stdout=asyncio.subprocess.PIPE
        )
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
        assert line == "HELD"
        if moment == "during":
            await _compaction_waiting(lock, schema)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if lock.is_in_transaction():
            await lock.execute("COMMIT")  # the killed worker's statement may run now, or not
        await lock.close()
    async with PostgresStore(url) as store:
        after = await store.get("s")
        assert after.status is SagaStatus.SUCCEEDED
        assert after.history[:-1] == before.history
        assert after.history[-1].type is EventType.SAGA_SUCCEEDED
        assert after.steps == before.steps
        # Finished with its rows or packed, it prunes the same.
        assert await store.prune(["s"], finished_before=T0 + 10) == ["s"]
        assert await store.load("s") is None
    assert (await _rows(schema, "s"))[:2] == (0, 0)
