"""PostgreSQL specifics the store contract cannot see: two stores (two processes' worth of
connections) sharing one log, LISTEN/NOTIFY wake-ups, the schema option and migrations,
reopening, URL forms and connection errors.

Each test works in a schema of its own, dropped afterwards. Nothing waits on time: wake-ups are
asserted by configuring engines whose polling would only happen after the test's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from sagaway import Engine, Saga, SagaStatus, StepContext, StoreError
from sagaway.errors import SagawayError
from sagaway.state import Change, Event, EventType, NewSaga, OutboxMessage, Park
from sagaway.store import open_store
from sagaway.store._pg_schema import SCHEMA_VERSION
from sagaway.store.postgres import PostgresStore, parse_url
from servers import (
    POSTGRES_URL,
    fresh_pg_schema,
    pg_schema_url,
)

T0 = 1_000.0
DEF = ("pg", 1)
NEVER = 3_600.0  # an engine's poll interval no test will ever reach


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with fresh_pg_schema("it") as name:
        yield name


@pytest.fixture
def make_store(schema: str) -> Callable[[], PostgresStore]:
    return lambda: PostgresStore(pg_schema_url(schema))


def pending(saga_id: str, at: float = T0) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name=DEF[0],
        version=DEF[1],
        input={"n": saga_id},
        at=at,
        events=[Event(at=at, type=EventType.SAGA_CREATED)],
    )


async def test_two_stores_claiming_concurrently_never_share_a_saga(
    make_store: Callable[[], PostgresStore],
) -> None:
    async with make_store() as a, make_store() as b:
        for i in range(120):
            await (a if i % 2 else b).create(pending(f"s{i:03}", at=T0 + i))

        async def drain(store: PostgresStore, owner: str) -> list[str]:
            got: list[str] = []
            while claimed := await store.claim(
                owner, now=T0, lease_seconds=60, definitions=[DEF], limit=7
            ):
                got += [r.id for r in claimed]
            return got

        results = await asyncio.gather(
            *(drain(store, f"{name}{n}") for name, store in (("a", a), ("b", b)) for n in range(3))
        )
        ids = [saga_id for got in results for saga_id in got]
        assert len(ids) == len(set(ids)) == 120
        for got, owner in zip(results, ["a0", "a1", "a2", "b0", "b1", "b2"], strict=True):
            for saga_id in got:
                record = await a.get(saga_id)
                assert record.owner == owner
                assert [e.type for e in record.history].count(EventType.SAGA_CLAIMED) == 1


def echo_saga() -> Saga:
    saga = Saga("pg_echo", version=1)

    @saga.step
    async def first(ctx: StepContext, value: dict[str, Any]) -> int:
        return int(value["n"]) + 1

    @saga.step
    async def second(ctx: StepContext, value: dict[str, Any]) -> str:
        return f"done-{ctx.results['first']}"

    return saga


async def test_notify_wakes_an_idle_worker(make_store: Callable[[], PostgresStore]) -> None:
    saga = echo_saga()
    # The worker's own recovery pass would come after an hour: only a notification can make
    # it claim the saga within the test's timeout.
    worker = Engine(
        make_store(), sagas=[saga], owner_id="worker", lease_seconds=NEVER, recovery_interval=NEVER
    )
    api = Engine(make_store(), sagas=[saga], owner_id="api", execute=False)
    async with worker, api:
        saga_id = await api.start(saga, {"n": 41})
        record = await worker.wait(saga_id, timeout=30)
        assert record.status is SagaStatus.SUCCEEDED
        assert record.output("second") == "done-42"
        history = (await api.get(saga_id)).history
        assert EventType.SAGA_CLAIMED in [e.type for e in history]


async def test_released_lease_notifies(make_store: Callable[[], PostgresStore]) -> None:
    woken = asyncio.Event()
    async with make_store() as writer, make_store() as listener:
        listener.on_work(woken.set)
        # A claim returns only once LISTEN is in place (see PostgresStore.claim).
        await listener.claim("x", now=T0, lease_seconds=1, definitions=[DEF], limit=1)
        await writer.create(pending("s"))
        await asyncio.wait_for(woken.wait(), 30)  # PENDING create notified
        woken.clear()
        await writer.claim("admin", now=T0, lease_seconds=60, definitions=[DEF], limit=1)
        await writer.commit("s", "admin", Change(SagaStatus.RUNNING, release_lease=True), T0)
        await asyncio.wait_for(woken.wait(), 30)  # a lease handed back on an active saga


async def test_schema_option_uses_an_existing_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'CREATE TABLE "{schema}".app_table (x int)')
        await conn.execute(f'INSERT INTO "{schema}".app_table VALUES (7)')
        async with PostgresStore(pg_schema_url(schema)) as store:
            await store.create(pending("s"))
        tables = {
            r[0]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
            )
        }
        assert tables == {
            "app_table",
            "sagaway_schema",
            "sagaway_instances",
            "sagaway_steps",
            "sagaway_events",
            "sagaway_outbox",
        }
        assert await conn.fetchval(f'SELECT x FROM "{schema}".app_table') == 7
        version = await conn.fetchval(f'SELECT max(version) FROM "{schema}".sagaway_schema')
        assert version == SCHEMA_VERSION
    finally:
        await conn.close()


async def test_concurrent_opens_migrate_once(make_store: Callable[[], PostgresStore]) -> None:
    stores = [make_store() for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))  # the advisory lock serialises them
    try:
        await stores[0].create(pending("s"))
        assert (await stores[3].get("s")).input == {"n": "s"}
    finally:
        await asyncio.gather(*(s.close() for s in stores))


async def test_reopen_keeps_data(make_store: Callable[[], PostgresStore]) -> None:
    async with make_store() as store:
        new = pending("s")
        new.status, new.owner, new.lease_expires_at = SagaStatus.RUNNING, "e", T0 + 60
        await store.create(new)
        event = Event(at=T0 + 1, type=EventType.SAGA_SUCCEEDED)
        change = Change(SagaStatus.SUCCEEDED, events=[event], release_lease=True)
        await store.commit("s", "e", change, T0 + 1)
        before = await store.get("s")
    async with make_store() as again:
        after = await again.get("s")
        assert after == before
        assert after.status is SagaStatus.SUCCEEDED
        assert [e.type for e in after.history] == [EventType.SAGA_CREATED, event.type]


async def test_a_version_1_schema_is_migrated_and_keeps_working(schema: str) -> None:
    # A saga log written before parked sagas and the outbox, with a saga in flight: opening
    # it adds the columns and the table, and the saga carries on.
    from sagaway.store._pg_schema import MIGRATIONS

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        quoted = f'"{schema}"'
        await conn.execute(f"CREATE SCHEMA {quoted}")
        await conn.execute(f"CREATE TABLE {quoted}.sagaway_schema (version integer PRIMARY KEY)")
        for statement in MIGRATIONS[0]:
            await conn.execute(statement.replace("{s}", quoted))
        await conn.execute(f"INSERT INTO {quoted}.sagaway_schema VALUES (1)")
        await conn.execute(
            f"INSERT INTO {quoted}.sagaway_instances (id, name, version, status, input, owner, "
            "lease_expires_at, created_at, updated_at) "
            "VALUES ('old', 'pg', 1, 'RUNNING', '{\"n\": 1}', 'e1', $1, $2, $2)",
            T0 + 60,
            T0,
        )
    finally:
        await conn.close()
    async with PostgresStore(pg_schema_url(schema)) as store:
        record = await store.get("old")
        assert (record.input, record.owner, record.waiting_for) == ({"n": 1}, "e1", None)
        message = OutboxMessage("m1", "old", "inventory.reserve", {"n": 1}, T0 + 1)
        park = Change(outbox=(message,), park=Park("reply:inventory.reserve", T0 + 30))
        await store.commit("old", "e1", park, T0 + 1)
        assert await store.outbox_pending(limit=5) == [message]
        assert [r.id for r in (await store.list_waiting()).items] == ["old"]
        claimed = await store.claim("e2", now=T0 + 30, lease_seconds=5, definitions=[DEF], limit=5)
        assert [(r.id, r.waiting_for) for r in claimed] == [("old", "reply:inventory.reserve")]
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        version = await conn.fetchval(f'SELECT max(version) FROM "{schema}".sagaway_schema')
        assert version == SCHEMA_VERSION
    finally:
        await conn.close()


async def test_newer_schema_is_refused(schema: str) -> None:
    async with PostgresStore(pg_schema_url(schema)):
        pass
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'INSERT INTO "{schema}".sagaway_schema VALUES ($1)', SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer than this sagaway"):
        await PostgresStore(pg_schema_url(schema)).open()


async def test_connection_refused_names_host_and_port() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1"):
        await store.open()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h:5433/db",
        "postgres://u@h:5433/db",
        "postgresql+asyncpg://u@h:5433/db",
        "postgresql+psycopg://u@h:5433/db?schema=other&sslmode=disable",
    ],
)
def test_url_forms(url: str) -> None:
    settings = parse_url(url)
    assert (settings.host, settings.port) == ("h", 5433)
    assert settings.dsn.startswith("postgresql://u@h:5433/db")
    assert "schema" not in settings.dsn
    assert isinstance(open_store(url), PostgresStore)


def test_url_defaults_and_bad_values() -> None:
    assert parse_url("postgresql://u@h/db").schema == "sagaway"
    assert parse_url("postgresql://u@h/db?schema=other").schema == "other"
    with pytest.raises(SagawayError, match="schema"):
        parse_url('postgresql://u@h/db?schema=x";drop')
    with pytest.raises(SagawayError, match="PostgreSQL URL"):
        parse_url("mysql://u@h/db")
