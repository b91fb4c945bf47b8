"""Two queries the engine's warning and the admin CLI need, on every store: ``stranded``
(unfinished sagas no engine drives, of definitions an engine does not know) and ``find_ids``
(ids by prefix). SQL stores answer them with one query, the others by paging: all must agree."""

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagaway import SagaStatus, SagaStore
from sagaway.state import Change, NewSaga, Park
from sagaway.store import _sqlite_admin
from sagaway.store.memory import MemoryStore
from sagaway.store.redis import RedisStore
from sagaway.store.sqlite import SQLiteStore
from servers import (
    POSTGRES_URL,
    drop_pg_schema,
    pg_schema_url,
    postgres_check,
    redis_check,
    require_server,
    unique_pg_schema,
    unique_redis_url,
)

NOW = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    if request.param == "memory":
        async with MemoryStore() as memory:
            yield memory
    elif request.param == "sqlite":
        async with SQLiteStore(f"sqlite:///{tmp_path / 'log.db'}") as sqlite:
            yield sqlite
    elif request.param == "postgresql":
        require_server("postgresql", postgres_check)
        from sagaway.store.postgres import PostgresStore

        schema = unique_pg_schema("stranded")
        try:
            async with PostgresStore(pg_schema_url(schema)) as postgres:
                yield postgres
        finally:
            await drop_pg_schema(schema)
    else:
        require_server("redis", redis_check)
        async with RedisStore(unique_redis_url("stranded")) as redis:
            try:
                yield redis
            finally:
                await redis.purge()


def _saga(
    saga_id: str,
    name: str,
    status: SagaStatus,
    owner: str | None,
    expires: float | None,
    version: int = 2,
) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name=name,
        version=version,
        input=None,
        at=NOW - 100,
        status=status,
        owner=owner,
        lease_expires_at=expires,
    )


async def test_stranded_counts_undriven_sagas_of_unknown_definitions(store: SagaStore) -> None:
    for new in [
        _saga("s1", "lost", SagaStatus.RUNNING, "dead", NOW - 1),  # lease expired
        _saga("s2", "lost", SagaStatus.PENDING, None, None),  # never claimed
        _saga("s3", "lost", SagaStatus.COMPENSATING, "me", NOW + 60),  # mine, a past life
        _saga("s4", "lost", SagaStatus.RUNNING, "alive", NOW + 60),  # driven by someone
        _saga("s5", "lost", SagaStatus.SUCCEEDED, None, None),  # finished
        _saga("s6", "known", SagaStatus.RUNNING, "dead", NOW - 1),  # this engine resumes it
    ]:
        await store.create(new)
    found = await store.stranded(now=NOW, owner="me", known={("known", 2)})
    assert found == {("lost", 2): 3}


async def test_stranded_tells_definitions_and_versions_apart(store: SagaStore) -> None:
    for new in [
        _saga("k1", "known", SagaStatus.PENDING, None, None, version=1),  # an older version
        _saga("k2", "known", SagaStatus.PENDING, None, None),
        _saga("a1", "alpha", SagaStatus.RUNNING, "alive", NOW + 60),  # none of it stranded
        _saga("z1", "zeta", SagaStatus.RUNNING, None, None),
        _saga("z2", "zeta", SagaStatus.RUNNING, "dead", NOW - 1),
        _saga("z3", "zeta", SagaStatus.FAILED, None, None),  # for an operator, not an engine
        _saga("f1", "failed", SagaStatus.FAILED, None, None),
    ]:
        await store.create(new)
    found = await store.stranded(now=NOW, owner="me", known={("known", 2)})
    assert found == {("known", 1): 1, ("zeta", 2): 2}
    assert await store.stranded(now=NOW, owner="me", known={("known", 1), ("zeta", 2)}) == {
        ("known", 2): 1
    }


async def _parked(store: SagaStore, parked: int) -> None:
    """``parked`` sagas of a known definition waiting for a signal, and an unknown one (parked
    and not)."""
    names = {f"k{i}": "known" for i in range(parked)} | {"lost-parked": "lost"}
    await asyncio.gather(
        *(store.create(_saga(i, n, SagaStatus.RUNNING, "e1", NOW + 60)) for i, n in names.items()),
        store.create(_saga("lost", "lost", SagaStatus.PENDING, None, None)),
    )
    park = Change(park=Park("signal:go", NOW + 900), release_lease=True)
    await asyncio.gather(*(store.commit(i, "e1", park, NOW) for i in names))


async def test_on_sqlite_the_count_reads_no_parked_saga_of_a_known_definition(
    tmp_path: Path,
) -> None:
    """It runs each minute: with 100,000 parked sagas, reading each one (to find, usually,
    nothing) took 94-318 ms. Counted in SQLite VM steps, not time: the same work for 10 or
    2,000 parked sagas of a known definition (and an unknown one, parked or not)."""

    async def vm_steps(parked: int) -> int:
        path = tmp_path / f"{parked}.db"
        async with SQLiteStore(f"sqlite:///{path}") as store:
            await _parked(store, parked)
        conn = sqlite3.connect(path, isolation_level=None)
        steps = 0

        def step() -> int:
            nonlocal steps
            steps += 1
            return 0

        conn.set_progress_handler(step, 1)
        try:
            found = _sqlite_admin.read_stranded(conn, NOW, "me", {("known", 2)})
        finally:
            conn.close()
        assert found == {("lost", 2): 2}
        return steps

    assert await vm_steps(2000) == await vm_steps(10)


async def test_on_postgresql_the_count_fetches_no_parked_saga_of_a_known_definition() -> None:
    """The rows the count's statements fetch (pg_stat_xact_user_tables, in one transaction,
    seq scans off as the planner has them on a big table): the same for 10 or 2,000 parked
    sagas of a known definition."""
    require_server("postgresql", postgres_check)
    import asyncpg

    from sagaway.store.postgres import PostgresStore

    async def fetched(parked: int) -> int:
        schema = unique_pg_schema("stranded")
        try:
            async with PostgresStore(pg_schema_url(schema)) as store:
                await _parked(store, parked)
                sql = store._sql
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                async with conn.transaction():
                    await conn.execute("SET LOCAL enable_seqscan = off")
                    rows = await conn.fetch(sql.stranded_not_parked, NOW, "me")
                    assert [tuple(r) for r in rows] == [("lost", 2, 1)]
                    unknown = await conn.fetch(sql.unknown_parked, ["known"], [2])
                    assert [tuple(r) for r in unknown] == [("lost", 2)]
                    assert await conn.fetchval(sql.stranded_parked, NOW, "me", "lost", 2) == 1
                    counters = await conn.fetchrow(
                        "SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables "
                        "WHERE schemaname = $1 AND relname = 'sagaway_instances'",
                        schema,
                    )
                    return int(counters[0] + counters[1])
            finally:
                await conn.close()
        finally:
            await drop_pg_schema(schema)

    assert await fetched(2000) == await fetched(10)


@contextlib.asynccontextmanager
async def _redis_store() -> AsyncIterator[RedisStore]:
    require_server("redis", redis_check)
    async with RedisStore(unique_redis_url("stranded")) as store:
        try:
            yield store
        finally:
            await store.purge()


async def _mixed_sagas(store: SagaStore) -> None:
    """Parked, free and leased sagas of a known definition (some leased to "me", live), and
    of an unknown one: one of each kind, and one live lease held by someone else."""
    await _parked(store, 20)
    await asyncio.gather(
        *(store.create(_saga(f"f{i}", "known", SagaStatus.PENDING, None, None)) for i in range(5)),
        *(
            store.create(_saga(f"m{i}", "known", SagaStatus.RUNNING, "me", NOW + 60))
            for i in range(5)
        ),
        store.create(_saga("lost-mine", "lost", SagaStatus.RUNNING, "me", NOW + 60)),
        store.create(_saga("lost-expired", "lost", SagaStatus.RUNNING, "dead", NOW - 1)),
        store.create(_saga("lost-alive", "lost", SagaStatus.RUNNING, "alive", NOW + 60)),
    )


async def test_on_redis_the_count_reads_no_saga() -> None:
    """The count runs each minute in a script that blocks Redis: it walked up to 10,000 sagas
    per status, reading each one's hash. Now it walks the definitions' claim indexes. Evidence
    by work, not time: every saga hash is replaced by a string, which any read of it (HMGET,
    HGET, HGETALL) refuses with WRONGTYPE; the count still answers, and right."""
    async with _redis_store() as store:
        await _mixed_sagas(store)
        ids = await store.execute("ZRANGE", f"{store.prefix}:all", 0, -1)
        assert len(ids) == 35
        for saga_id in ids:
            await store.execute("SET", f"{store.prefix}:saga:{saga_id}", "not a hash")
        found = await store.stranded(now=NOW, owner="me", known={("known", 2)})
        assert found == {("lost", 2): 4}  # parked, pending, mine and expired; not "alive"
        everything = await store.stranded(now=NOW, owner="me", known=())
        assert everything == {("lost", 2): 4, ("known", 2): 30}


async def test_on_redis_a_log_written_before_the_definitions_index_is_counted_right() -> None:
    """``P:defs`` (the definitions the count walks) is built at open for a log that has none."""
    async with _redis_store() as store:
        await _mixed_sagas(store)
        await store.execute("DEL", f"{store.prefix}:defs")
        await store.execute("HDEL", f"{store.prefix}:meta", "defs")
        assert await store.stranded(now=NOW, owner="me", known={("known", 2)}) == {}
        async with RedisStore(store.url) as reopened:
            found = await reopened.stranded(now=NOW, owner="me", known={("known", 2)})
        assert found == {("lost", 2): 4}


async def test_find_ids_by_prefix(store: SagaStore) -> None:
    for saga_id in ["ab1", "ab2", "b", "abc", "xab"]:
        await store.create(_saga(saga_id, "x", SagaStatus.PENDING, None, None))
    assert sorted(await store.find_ids("ab", limit=5)) == ["ab1", "ab2", "abc"]
    assert len(await store.find_ids("ab", limit=2)) == 2
    assert await store.find_ids("abc") == ["abc"]
    assert await store.find_ids("c") == []
