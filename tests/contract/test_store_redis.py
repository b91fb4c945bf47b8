"""The store contract on the Redis store: a fresh key prefix per test, deleted afterwards.

Needs the Redis server on 127.0.0.1:6379 (``SAGAWAY_TEST_REDIS_URL`` overrides it): skipped
when it is unreachable, failed under ``CI=true`` (see ``tests/servers.py``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from sagaway.store.base import SagaStore
from sagaway.testing.contract import SagaStoreContract
from servers import require_server

REDIS_URL = os.environ.get("SAGAWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_check() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def unique_url(tag: str = "test") -> str:
    """The test server's URL with a key prefix no other run uses."""
    return f"{REDIS_URL}?prefix=sagaway-{tag}-{uuid.uuid4().hex[:12]}"


class TestRedisStore(SagaStoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[SagaStore]:
        require_server("redis", redis_check)
        from sagaway.store.redis import RedisStore

        async with RedisStore(unique_url("contract")) as store:
            try:
                yield store
            finally:
                await store.purge()
