"""The PostgreSQL saga log when the server terminates its connection in the middle of a group
commit (``pg_terminate_backend``, a restart, a failover): every write of the batch fails with
the real cause, nothing is retried on the dead connection, and the store goes on with a fresh one.

Issue 8 item 9: the batch used to be re-run operation by operation on the connection the server
had just closed, so callers got ``InternalClientError: cannot switch to state 12`` (or "connection
has been released back to the pool") instead of the termination, once per operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from batching import in_one_batch
from sagaway import StoreError
from sagaway.state import Change, Event, EventType, NewSaga
from sagaway.store.postgres import PostgresStore
from servers import (
    POSTGRES_URL,
    fresh_pg_schema,
    pg_schema_url,
)

T0 = 1_000.0


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with fresh_pg_schema("connloss") as name:
        yield name


def pending(saga_id: str) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name="pg",
        version=1,
        input={},
        at=T0,
        events=[Event(at=T0, type=EventType.SAGA_CREATED)],
    )


def note(detail: str) -> Change:
    return Change(events=[Event(at=T0 + 1, type=EventType.SAGA_CLAIMED, detail=detail)])


async def blocked_backend(admin: asyncpg.Connection) -> int:
    """The pid of the store's connection once its batch waits for our row locks.

    Found by who blocks it (our own backend), not by its query text: the text may not name the
    schema (search_path) and is cut at track_activity_query_size.
    """
    admin_pid = await admin.fetchval("SELECT pg_backend_pid()")
    for _ in range(3000):
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'sagaway'"
            " AND $1 = ANY(pg_blocking_pids(pid))",
            admin_pid,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)  # polling a condition (with a bound), not a timing guess
    raise AssertionError("the batch never blocked on the locked rows")


async def terminate_when_blocked(admin: asyncpg.Connection) -> None:
    pid = await blocked_backend(admin)
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)


async def test_a_batch_whose_connection_is_terminated_fails_with_the_cause(schema: str) -> None:
    async with PostgresStore(f"{pg_schema_url(schema)}&pool_size=2") as store:
        for saga_id in ("s1", "s2"):
            await store.create(pending(saga_id))
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            locker = admin.transaction()
            await locker.start()
            await admin.execute(
                f'SELECT 1 FROM "{schema}".sagaway_instances WHERE id IN ($1, $2) FOR UPDATE',
                "s1",
                "s2",
            )
            # Terminate the batch's backend once it waits for our locks, while in_one_batch
            # makes sure both commits travel in that one batch.
            killer = asyncio.create_task(terminate_when_blocked(admin))
            outcomes = await in_one_batch(
                store,
                store.commit("s1", None, note("one"), T0 + 1),
                store.commit("s2", None, note("two"), T0 + 1),
            )
            await killer
            await locker.rollback()
        finally:
            await admin.close()
        for outcome in outcomes:
            assert isinstance(outcome, StoreError), outcome
            text = str(outcome)
            assert "terminating connection" in text, text
            assert "cannot switch to state" not in text, text
            assert "released back" not in text, text

        # The store goes on with a fresh connection: the same writes now commit.
        await store.commit("s1", None, note("one"), T0 + 2)
        await store.commit("s2", None, note("two"), T0 + 2)
        for saga_id, detail in (("s1", "one"), ("s2", "two")):
            record = await store.get(saga_id)
            assert [e.detail for e in record.history if e.type is EventType.SAGA_CLAIMED] == [
                detail
            ]
