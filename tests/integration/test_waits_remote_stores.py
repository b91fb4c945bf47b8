"""The durable-wait scenarios of ``waitkit`` (signals, timeouts, three-day sleeps, a signal
through an API-only engine) on the PostgreSQL and Redis saga stores; the unit tests run them
on memory and SQLite."""

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

import waitkit
from servers import (
    drop_pg_schema,
    pg_schema_url,
    postgres_check,
    redis_check,
    require_server,
    unique_pg_schema,
    unique_redis_url,
)
from waitkit import Waits


@pytest.fixture(params=["postgresql", "redis"])
async def kit(request: pytest.FixtureRequest) -> AsyncIterator[Waits]:
    if request.param == "postgresql":
        require_server("postgresql", postgres_check)
        schema = unique_pg_schema("waits")
        try:
            yield Waits(pg_schema_url(schema))
        finally:
            await drop_pg_schema(schema)
    else:
        require_server("redis", redis_check)
        waits = Waits(unique_redis_url("waits"))
        yield waits
        from sagaway.store.redis import RedisStore

        async with RedisStore(waits.store_url) as store:
            await store.purge()


@pytest.mark.parametrize("scenario", waitkit.ALL, ids=lambda f: f.__name__.removeprefix("check_"))
async def test_waits(kit: Waits, scenario: Callable[[Waits], Coroutine[Any, Any, None]]) -> None:
    await scenario(kit)
