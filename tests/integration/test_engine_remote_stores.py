"""The parked-saga scenarios of ``remotekit`` (remote steps over a message transport: outbox,
park, reply, timeout, re-send, restart, relay sweep) on the PostgreSQL and Redis saga stores;
the unit tests run them on memory and SQLite."""

from collections.abc import AsyncIterator

import pytest

import remotekit
from remotekit import Parked
from servers import (
    drop_pg_schema,
    pg_schema_url,
    postgres_check,
    redis_check,
    require_server,
    unique_pg_schema,
    unique_redis_url,
)


@pytest.fixture(params=["postgresql", "redis"])
async def parked(request: pytest.FixtureRequest) -> AsyncIterator[Parked]:
    if request.param == "postgresql":
        require_server("postgresql", postgres_check)
        schema = unique_pg_schema("remote")
        try:
            yield Parked(pg_schema_url(schema))
        finally:
            await drop_pg_schema(schema)
    else:
        require_server("redis", redis_check)
        kit = Parked(unique_redis_url("remote"))
        yield kit
        from sagaway.store.redis import RedisStore

        async with RedisStore(kit.store_url) as store:
            await store.purge()


async def test_happy_path_holds_no_lease_while_waiting(parked: Parked) -> None:
    await remotekit.check_parked_happy_path_holds_no_lease_while_waiting(parked)


async def test_business_failure_compensates_in_reverse(parked: Parked) -> None:
    await remotekit.check_parked_business_failure_compensates_remote_steps_in_reverse(parked)


async def test_duplicate_reply_is_applied_once(parked: Parked) -> None:
    await remotekit.check_duplicate_reply_is_applied_once(parked)


async def test_a_reply_whose_take_lost_reads_again(parked: Parked) -> None:
    await remotekit.check_a_reply_whose_take_lost_reads_again(parked)


async def test_lost_reply_is_resent_then_compensated(parked: Parked) -> None:
    await remotekit.check_lost_reply_is_resent_with_the_same_key_then_compensated(parked)


async def test_engine_restart_while_parked(parked: Parked) -> None:
    await remotekit.check_engine_restart_while_parked_picks_up_the_reply(parked)


async def test_relay_republishes_after_a_crash(parked: Parked) -> None:
    await remotekit.check_relay_republishes_after_a_crash_between_commit_and_publish(parked)


async def test_cancel_while_parked(parked: Parked) -> None:
    await remotekit.check_cancel_while_parked_compensates_the_step_in_flight(parked)
