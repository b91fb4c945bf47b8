"""Retention on one PostgreSQL log shared by several workers: each pruner takes a batch of its
own. A batch is chosen and deleted in one statement that locks its rows as it picks them and
skips the rows another pruner holds, so two workers never queue on the same oldest sagas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from sagaway.retention import prune_finished
from sagaway.state import Change, Event, EventType, NewSaga, SagaStatus
from sagaway.store.postgres import PostgresStore
from servers import POSTGRES_URL, fresh_pg_schema, pg_schema_url

T0 = 1_000.0
CUTOFF = T0 + 10_000  # every saga below finished before it
BOUND = 60  # seconds: only a pruner waiting on another's rows comes near it


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with fresh_pg_schema("prune") as name:
        yield name


@pytest.fixture
def make_store(schema: str) -> Callable[[], PostgresStore]:
    return lambda: PostgresStore(pg_schema_url(schema))


async def finished(store: PostgresStore, count: int) -> list[str]:
    """``count`` succeeded sagas, oldest first: ``s000``, ``s001``, ..."""
    ids = [f"s{n:03}" for n in range(count)]
    for n, saga_id in enumerate(ids):
        at = T0 + n
        created = Event(at=at, type=EventType.SAGA_CREATED)
        await store.create(NewSaga(saga_id, "pg", 1, {"n": n}, at, events=[created]))
        done = Change(status=SagaStatus.SUCCEEDED, events=[Event(at, EventType.SAGA_SUCCEEDED)])
        await store.commit(saga_id, None, done, at)
    return ids


async def test_a_pruner_skips_the_sagas_another_holds_instead_of_waiting(
    make_store: Callable[[], PostgresStore], schema: str
) -> None:
    async with make_store() as store:
        ids = await finished(store, 6)
        other = await asyncpg.connect(POSTGRES_URL)
        held = other.transaction()  # another pruner, its batch of the oldest sagas in hand
        await held.start()
        try:
            await other.fetch(
                f'SELECT id FROM "{schema}".sagaway_instances WHERE id = ANY($1) FOR UPDATE',
                ids[:3],
            )
            async with asyncio.timeout(BOUND):
                removed, done = await prune_finished(store, finished_before=CUTOFF, batch=2)
            assert (sorted(removed), done) == (ids[3:], True)
        finally:
            await held.rollback()  # the other pruner gives up: its sagas stay
            await other.close()
        assert [r.id for r in (await store.list_sagas(limit=10)).items] == ids[2::-1]
        removed, _ = await prune_finished(store, finished_before=CUTOFF, batch=2)
        assert sorted(removed) == ids[:3]


async def test_concurrent_pruners_never_both_report_a_saga(
    make_store: Callable[[], PostgresStore],
) -> None:
    async with make_store() as a, make_store() as b:
        ids = await finished(a, 150)
        results = await asyncio.gather(
            *(prune_finished(store, finished_before=CUTOFF, batch=7) for store in (a, b, a, b))
        )
        reported = [saga_id for removed, _ in results for saga_id in removed]
        assert sorted(reported) == ids  # each saga reported once, by one pruner
        assert (await a.list_sagas(limit=10)).total == 0
