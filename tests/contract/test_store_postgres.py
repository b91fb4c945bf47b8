"""The store contract on the PostgreSQL store: a fresh schema per test, dropped afterwards.

Needs PostgreSQL on 127.0.0.1:5432 (``SAGAWAY_TEST_POSTGRES_URL`` overrides it): skipped when
it is unreachable, failed under ``CI=true`` (see ``tests/servers.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sagaway.store.base import SagaStore
from sagaway.testing.contract import SagaStoreContract
from sagaway.testing.contract_compaction import CompactionContract
from sagaway.testing.contract_retention import PruningStoreContract
from sagaway.testing.contract_taking import TakingStoreContract
from sagaway.testing.contract_tiers import OutboxStoreContract
from servers import drop_pg_schema, pg_schema_url, postgres_check, require_server, unique_pg_schema


class TestPostgresStore(
    SagaStoreContract,
    OutboxStoreContract,
    PruningStoreContract,
    CompactionContract,
    TakingStoreContract,
):
    @pytest.fixture
    async def store(self) -> AsyncIterator[SagaStore]:
        require_server("postgresql", postgres_check)
        from sagaway.store.postgres import PostgresStore

        schema = unique_pg_schema("contract")
        try:
            async with PostgresStore(pg_schema_url(schema)) as store:
                yield store
        finally:
            await drop_pg_schema(schema)
