"""Durability settings, checked where a SIGKILL cannot see them.

A killed process loses nothing the OS already has, so every crash test passes just as well
with fsync switched off (``?durable=false``). What protects a transition from a power loss is
the store's commit settings: these tests pin them on the connections that actually commit.
What a real power-loss test would need is in ``docs/stores.md`` ("Durability").
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from sagaway import Engine, Saga, SagaStatus, StepContext
from sagaway.store.postgres import PostgresStore
from sagaway.store.sqlite import SQLiteStore
from servers import fresh_pg_schema, pg_schema_url

FULL, NORMAL = 2, 1  # PRAGMA synchronous values


def _saga() -> Saga:
    saga = Saga("durable", version=1)

    @saga.step
    async def one(ctx: StepContext, n: int) -> int:
        return n

    @saga.step
    async def two(ctx: StepContext, n: int) -> int:
        return n + 1

    return saga


async def _run_sagas(engine: Engine, n: int = 5) -> None:
    saga = engine.register(_saga())
    for i in range(n):
        record = await engine.wait(await engine.start(saga, i), timeout=30)
        assert record.status is SagaStatus.SUCCEEDED


def _writer_synchronous(store: SQLiteStore) -> int:
    conn = store._writer_conn  # the connection every batch commits on
    assert conn is not None
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_the_default_sqlite_store_commits_with_synchronous_full(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'log.db'}")
    async with Engine(store, owner_id="durability") as engine:
        assert _writer_synchronous(store) == FULL
        await _run_sagas(engine)
        assert store.stats.batches > 0, "the commits went through this connection"
        assert _writer_synchronous(store) == FULL, "still FULL after committing"


async def test_durable_false_is_the_only_way_to_relax_it(tmp_path: Path) -> None:
    async with SQLiteStore(f"sqlite:///{tmp_path / 'fast.db'}?durable=false") as store:
        assert _writer_synchronous(store) == NORMAL
    async with SQLiteStore(f"sqlite:///{tmp_path / 'explicit.db'}?durable=true") as store:
        assert _writer_synchronous(store) == FULL


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    async with fresh_pg_schema("durable") as name:
        yield name


async def test_the_postgres_store_never_turns_synchronous_commit_off(
    pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every statement on every pooled connection is logged: a SET (or SET LOCAL, invisible to
    # SHOW afterwards) of synchronous_commit anywhere in the store's work would show up here.
    statements: list[str] = []
    real_create_pool = asyncpg.create_pool

    def logged_pool(*args: Any, **kwargs: Any) -> Any:
        assert "synchronous_commit" not in (kwargs.get("server_settings") or {})

        async def init(conn: asyncpg.Connection) -> None:
            conn.add_query_logger(lambda record: statements.append(record.query))

        return real_create_pool(*args, init=init, **kwargs)

    monkeypatch.setattr(asyncpg, "create_pool", logged_pool)
    store = PostgresStore(pg_schema_url(pg_schema))
    async with Engine(store, owner_id="durability") as engine:
        await _run_sagas(engine)
        seen = list(statements)
        assert store._pool is not None
        async with store._pool.acquire() as conn:
            setting = await conn.fetchval("SHOW synchronous_commit")
    assert setting == "on"
    assert len(seen) > 10, "the store's statements were seen"
    touching = [q for q in seen if re.search(r"synchronous_commit|fsync", q, re.I)]
    assert touching == []
