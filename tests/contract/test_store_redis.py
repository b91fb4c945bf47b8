"""The store contract on the Redis store: a fresh key prefix per test, deleted afterwards.

Needs the Redis server on 127.0.0.1:6379 (``SAGAWAY_TEST_REDIS_URL`` overrides it): skipped
when it is unreachable, failed under ``CI=true`` (see ``tests/servers.py``).
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
from servers import redis_check, require_server, unique_redis_url


class TestRedisStore(
    SagaStoreContract,
    OutboxStoreContract,
    PruningStoreContract,
    CompactionContract,
    TakingStoreContract,
):
    @pytest.fixture
    async def store(self) -> AsyncIterator[SagaStore]:
        require_server("redis", redis_check)
        from sagaway.store.redis import RedisStore

        async with RedisStore(unique_redis_url("contract")) as store:
            try:
                yield store
            finally:
                await store.purge()
