"""The store contract on the PostgreSQL store: a fresh schema per test, dropped afterwards.

Needs PostgreSQL on 127.0.0.1:5432 (``SAGAWAY_TEST_POSTGRES_URL`` overrides it): skipped when
it is unreachable, failed under ``CI=true`` (see ``tests/servers.py``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from sagaway.store.base import SagaStore
from sagaway.testing.contract import SagaStoreContract
from servers import require_server

POSTGRES_URL = os.environ.get(
    "SAGAWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def postgres_check() -> None:
    import psycopg

    psycopg.connect(POSTGRES_URL, connect_timeout=3).close()


def unique_schema(tag: str = "test") -> str:
    return f"sagaway_{tag}_{uuid.uuid4().hex[:12]}"


def url_for(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}schema={schema}"


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class TestPostgresStore(SagaStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[SagaStore]:
        require_server("postgresql", postgres_check)
        from sagaway.store.postgres import PostgresStore

        schema = unique_schema("contract")
        try:
            async with PostgresStore(url_for(schema)) as store:
                yield store
        finally:
            await drop_schema(schema)
