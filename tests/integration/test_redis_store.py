"""The Redis store against a real server, beyond the contract: several store instances (as in
several processes) sharing one Redis, pub/sub wake-ups, key prefixes.

Each test uses its own key prefix and deletes its keys. Skipped when Redis is unreachable,
failed under ``CI=true`` (``tests/servers.py``). No sleeps and no timing assertions: waits are
bounded by generous timeouts and only the outcome is asserted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from sagaway import Engine, Saga, SagaStatus, StepContext
from sagaway.errors import LeaseLost, SagaNotFound, SagawayError, StoreError
from sagaway.state import Change, Event, EventType, NewSaga, Park, SagaRecord
from sagaway.store.redis import RedisStore
from servers import REDIS_URL, redis_check, require_server

DEF = ("it", 1)
T0 = 1_000.0

# SCRIPT FLUSH empties the whole server's script cache, not one prefix's: a test that counts
# round trips would see every caller reload its scripts if the flush ran beside it on another
# xdist worker. Tests in one group run in one worker, one after the other.
SCRIPT_CACHE = pytest.mark.xdist_group("redis-script-cache")


@pytest.fixture
async def stores() -> AsyncIterator[Callable[[str], RedisStore]]:
    """A factory of opened stores on per-test prefixes (same tag: same prefix, so two stores
    see the same sagas); every store is closed and every prefix purged afterwards."""
    require_server("redis", redis_check)
    run = uuid.uuid4().hex[:12]
    opened: list[RedisStore] = []

    def make(tag: str) -> RedisStore:
        store = RedisStore(f"{REDIS_URL}?prefix=sagaway-it-{run}-{tag}")
        opened.append(store)
        return store

    yield make
    for store in opened:  # what a test left open (engines close their own stores)
        await store.close()
    for prefix in {store.prefix for store in opened}:
        async with RedisStore(f"{REDIS_URL}?prefix={prefix}") as cleaner:
            await cleaner.purge()


ACTIVE = {"PENDING", "RUNNING", "COMPENSATING"}


async def assert_indexes_match(store: RedisStore) -> None:
    """Every index key holds exactly the sagas its definition says, read from the hashes: the
    scripts maintain them incrementally, so a missed update would show up here."""
    r, p = store.redis, store.prefix
    expected: dict[str, dict[str, float]] = {}
    owners: dict[str, set[str]] = {}
    for key in [k async for k in r.scan_iter(match=f"{p}:saga:*")]:
        h = await r.hgetall(key)
        i, created = h["id"], float(h["created"])
        for index in ("all", f"status:{h['status']}", f"name:{h['name']}"):
            expected.setdefault(index, {})[i] = created
        expected.setdefault(f"sn:{h['status']}:{h['name']}", {})[i] = created
        if "waiting" in h:
            expected.setdefault("waiting", {})[i] = float(h["parked"])
        if h["status"] in ACTIVE:
            d = f"{h['version']}:{h['name']}"
            if "owner" in h and "lease" in h:
                expected.setdefault(f"leased:{d}", {})[i] = float(h["lease"])
            elif "parked" in h:
                expected.setdefault(f"parked:{d}", {})[i] = float(h["parked"])
            else:
                expected.setdefault(f"free:{d}", {})[i] = created
            if "owner" in h:
                owners.setdefault(h["owner"], set()).add(i)
    found: dict[str, dict[str, float]] = {}
    kinds = ("all", "status:*", "name:*", "sn:*", "free:*", "leased:*", "parked:*", "waiting")
    for kind in kinds:
        async for key in r.scan_iter(match=f"{p}:{kind}"):
            members = await r.zrange(key, 0, -1, withscores=True)
            if members:
                found[key.removeprefix(f"{p}:")] = dict(members)
    assert found == expected
    # The stranded count walks P:defs: a definition with sagas queued but missing there would
    # never be counted.
    queued = {k.split(":", 1)[1] for k in found if k.startswith(("free:", "leased:", "parked:"))}
    assert queued <= await r.smembers(f"{p}:defs")
    found_owners = {}
    async for key in r.scan_iter(match=f"{p}:owner:*"):
        if members := await r.smembers(key):
            found_owners[key.removeprefix(f"{p}:owner:")] = members
    assert found_owners == owners


def pending(saga_id: str, name: str = DEF[0], version: int = DEF[1]) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name=name,
        version=version,
        input={"n": saga_id},
        at=T0,
        events=[Event(at=T0, type=EventType.SAGA_CREATED)],
    )


async def test_two_stores_claiming_concurrently_never_overlap(
    stores: Callable[[str], RedisStore],
) -> None:
    first, second = stores("shared"), stores("shared")
    await first.open()
    await second.open()
    ids = {f"s{i:03}" for i in range(300)}
    await asyncio.gather(*(first.create(pending(i)) for i in ids))

    async def drain(store: RedisStore, owner: str) -> list[str]:
        taken: list[str] = []
        while True:
            batch = await store.claim(owner, now=T0, lease_seconds=60, definitions=[DEF], limit=7)
            if not batch:
                return taken
            taken += [record.id for record in batch]

    results = await asyncio.gather(
        *(drain(store, f"e{n}") for n in range(3) for store in (first, second))
    )
    claimed = [saga_id for taken in results for saga_id in taken]
    assert len(claimed) == len(set(claimed)) == len(ids)
    assert set(claimed) == ids
    owners = {saga_id: f"e{n // 2}" for n, taken in enumerate(results) for saga_id in taken}
    for saga_id in sorted(ids)[:30]:
        record = await second.get(saga_id)
        assert record.owner == owners[saga_id]
        assert [e.type for e in record.history].count(EventType.SAGA_CLAIMED) == 1
    # The leases fence commits across instances: the other store's owner cannot write.
    victim = sorted(ids)[0]
    intruder = "e1" if owners[victim] == "e0" else "e0"
    with pytest.raises(Exception, match="no longer leased"):
        await first.commit(victim, intruder, Change(status=SagaStatus.SUCCEEDED), T0 + 1)
    await assert_indexes_match(first)


async def test_pubsub_wakes_an_idle_worker_engine(stores: Callable[[str], RedisStore]) -> None:
    saga = Saga("wake", version=1)
    effects: list[str] = []

    @saga.step
    async def record(ctx: StepContext, order: dict[str, int]) -> int:
        effects.append(ctx.idempotency_key)
        return order["n"]

    # The worker's recovery passes are an hour apart, so only a notification can wake it.
    worker = Engine(
        stores("wake"),
        sagas=[saga],
        owner_id="worker",
        lease_seconds=3600,
        recovery_interval=3600,
    )
    api = Engine(stores("wake"), sagas=[saga], owner_id="api", execute=False)
    async with worker, api:
        for n in range(3):  # the first may be found by the subscribe-time pass; later ones not
            saga_id = await api.start(saga, {"n": n})
            record = await api.wait(saga_id, timeout=30)
            assert record.status is SagaStatus.SUCCEEDED
            assert record.output("record") == n
        assert len(effects) == 3
        assert isinstance(api.store, RedisStore)
        await assert_indexes_match(api.store)


async def test_admin_retry_hands_the_saga_to_a_worker(stores: Callable[[str], RedisStore]) -> None:
    saga = Saga("retry", version=1)

    @saga.step
    async def only(ctx: StepContext, order: dict[str, int]) -> str:
        return "done"

    setup = stores("retry")
    async with setup:
        new = pending("failed", name="retry")
        new.status, new.input = SagaStatus.FAILED, {"n": 1}
        await setup.create(new)
    worker = Engine(
        stores("retry"), sagas=[saga], owner_id="w", lease_seconds=3600, recovery_interval=3600
    )
    admin = Engine(stores("retry"), sagas=[saga], owner_id="admin", execute=False)
    async with worker, admin:
        await admin.retry("failed")  # FAILED -> RUNNING, lease handed back: PUBLISH
        record = await admin.wait("failed", timeout=30)
        assert record.status is SagaStatus.SUCCEEDED
        assert isinstance(admin.store, RedisStore)
        await assert_indexes_match(admin.store)


async def test_prefixes_isolate_stores_on_one_server(stores: Callable[[str], RedisStore]) -> None:
    left, right = stores("left"), stores("right")
    await left.open()
    await right.open()
    await left.create(pending("same-id"))
    await right.create(pending("same-id", name="other"))
    await right.create(pending("only-right"))
    assert (await left.get("same-id")).name == "it"
    assert (await right.get("same-id")).name == "other"
    assert await left.load("only-right") is None
    assert (await left.list_sagas()).total == 1
    assert await right.counts() == {SagaStatus.PENDING: 2}
    claimed = await left.claim("e", now=T0, lease_seconds=5, definitions=[DEF], limit=10)
    assert [r.id for r in claimed] == ["same-id"]
    assert (await right.get("same-id")).owner is None
    await left.purge()
    assert await left.load("same-id") is None
    assert (await right.list_sagas()).total == 2


async def test_reconnects_after_its_connection_is_killed(
    stores: Callable[[str], RedisStore],
) -> None:
    store = stores("kill")
    await store.open()
    await store.create(pending("before"))
    connection_id = await store.execute("CLIENT", "ID")
    async with RedisStore(store.url) as admin:  # another connection kills the store's
        assert await admin.execute("CLIENT", "KILL", "ID", connection_id) == 1
    # redis-py's pool replaces a connection the server closed while it was idle; should the
    # close not have been seen yet, that call fails with StoreError and the next reconnects.
    for _ in range(20):
        try:
            record = await store.load("before")
        except StoreError:
            continue
        break
    else:
        pytest.fail("the store did not reconnect")
    assert record is not None
    assert await store.execute("CLIENT", "ID") != connection_id
    await store.create(pending("after"))
    assert (await store.list_sagas()).total == 2


async def test_a_batch_in_flight_on_a_killed_connection_fails_and_the_store_recovers(
    stores: Callable[[str], RedisStore],
) -> None:
    """The connection dies while a batch waits for its replies: its callers get StoreError
    (outcome unknown) instead of hanging, and the next batch runs on a new connection."""
    store = stores("inflight")
    await store.open()
    await store.create(pending("s"))
    connection_id = await store.execute("CLIENT", "ID")
    # A command that blocks the store's connection until it is killed.
    blocked = asyncio.ensure_future(store.execute("BLPOP", f"{store.prefix}:never", "0"))
    async with RedisStore(store.url) as admin, asyncio.timeout(30):
        while True:  # until the server shows the store's connection blocked in BLPOP
            lines = (await admin.execute("CLIENT", "LIST")).splitlines()
            if any(
                line.startswith(f"id={connection_id} ") and " cmd=blpop " in line for line in lines
            ):
                break
        assert await admin.execute("CLIENT", "KILL", "ID", connection_id) == 1
    with pytest.raises(StoreError):
        await blocked
    assert (await store.get("s")).id == "s"
    assert await store.execute("CLIENT", "ID") != connection_id


@SCRIPT_CACHE
async def test_concurrent_calls_share_one_pipeline_and_keep_their_own_errors(
    stores: Callable[[str], RedisStore],
) -> None:
    store = stores("batch")
    await store.open()
    await store.create(pending("mine"))
    await store.claim("e1", now=T0, lease_seconds=60, definitions=[DEF], limit=1)
    batcher = store._batcher
    assert batcher is not None
    batches, commands = batcher.batches, batcher.commands
    results = await asyncio.gather(
        *(store.create(pending(f"n{i}")) for i in range(20)),
        store.commit("mine", "intruder", Change(status=SagaStatus.SUCCEEDED), T0 + 1),
        store.commit("missing", "e1", Change(status=SagaStatus.SUCCEEDED), T0 + 1),
        store.execute("NO-SUCH-COMMAND"),
        store.load("mine"),
        return_exceptions=True,
    )
    # Issued in one event-loop turn: one pipeline, one round trip.
    assert (batcher.batches - batches, batcher.commands - commands) == (1, 24)
    assert results[:20] == [(f"n{i}", True) for i in range(20)]
    assert isinstance(results[20], LeaseLost)
    assert isinstance(results[21], SagaNotFound)
    assert isinstance(results[22], StoreError)
    assert "unknown command" in str(results[22])
    loaded = results[23]
    assert isinstance(loaded, SagaRecord)
    assert loaded.owner == "e1"
    assert (await store.list_sagas()).total == 21


async def test_a_closed_store_refuses_calls(stores: Callable[[str], RedisStore]) -> None:
    store = stores("closed")
    await store.open()
    # The load is queued first (gather starts its tasks in order); close waits for its reply.
    loaded, _ = await asyncio.gather(store.load("nothing"), store.close())
    assert loaded is None
    with pytest.raises(StoreError):
        await store.execute("PING")


@SCRIPT_CACHE
async def test_scripts_reloaded_after_the_server_forgets_them(
    stores: Callable[[str], RedisStore],
) -> None:
    """A Redis restart empties its script cache: EVALSHA answers NOSCRIPT, the store loads
    its scripts again and resends (safe: a script that was not found did not run)."""
    store = stores("flush")
    await store.open()
    await store.create(pending("s"))
    await store.create(pending("t"))
    await store.execute("SCRIPT", "FLUSH")
    # Several scripts in one batch all answer NOSCRIPT; each caller reloads and resends.
    claimed, loaded, page = await asyncio.gather(
        store.claim("e", now=T0, lease_seconds=5, definitions=[DEF], limit=1),
        store.load("t"),
        store.list_sagas(),
    )
    assert [r.id for r in claimed] == ["s"]
    assert loaded is not None
    assert loaded.id == "t"
    assert page.total == 2
    assert (await store.get("s")).owner == "e"


async def test_indexes_follow_every_kind_of_transition(
    stores: Callable[[str], RedisStore],
) -> None:
    store = stores("idx")
    await store.open()
    for i in range(6):
        await store.create(pending(f"p{i}"))
    new = pending("owned")
    new.status, new.owner, new.lease_expires_at = SagaStatus.RUNNING, "e0", T0 + 5
    await store.create(new)
    await store.create(pending("other-def", name="other"))
    await assert_indexes_match(store)
    claimed = await store.claim("e1", now=T0, lease_seconds=30, definitions=[DEF], limit=3)
    await store.renew_leases("e1", now=T0 + 1, lease_seconds=30)
    await store.commit(claimed[0].id, "e1", Change(SagaStatus.COMPENSATING), T0 + 2)
    await store.commit(claimed[0].id, "e1", Change(SagaStatus.FAILED, error="x"), T0 + 3)
    await store.commit(claimed[1].id, "e1", Change(SagaStatus.SUCCEEDED, release_lease=True), T0)
    await store.commit(claimed[2].id, "e1", Change(release_lease=True), T0 + 2)  # handed back
    await store.request_cancel("p5", Event(at=T0, type=EventType.CANCEL_REQUESTED), T0)
    await assert_indexes_match(store)
    await store.acquire(
        claimed[0].id, "admin", now=T0 + 40, lease_seconds=30, statuses=[SagaStatus.FAILED]
    )
    await store.commit(claimed[0].id, "admin", Change(SagaStatus.RUNNING), T0 + 40)
    await store.claim("e2", now=T0 + 50, lease_seconds=30, definitions=[DEF], limit=100)
    await store.claim(
        "e2", now=T0 + 50, lease_seconds=5, definitions=[DEF], limit=100, include_own=True
    )
    await assert_indexes_match(store)
    assert await store.counts() == {
        SagaStatus.PENDING: 5,
        SagaStatus.RUNNING: 2,
        SagaStatus.SUCCEEDED: 1,
    }
    assert {r.owner for r in (await store.list_sagas(status=SagaStatus.PENDING)).items} == {
        "e2",
        None,
    }


async def test_connection_errors_are_store_errors() -> None:
    require_server("redis", redis_check)
    refused = RedisStore("redis://127.0.0.1:1/0?prefix=nowhere")
    with pytest.raises(StoreError, match="cannot connect"):
        await refused.open()
    # No such user on this server: the handshake is refused, and that is a StoreError too.
    host = REDIS_URL.split("://", 1)[1]
    bad_auth = RedisStore(f"redis://no-such-user:not-the-password@{host}?prefix=nowhere")
    with pytest.raises(StoreError, match=r"cannot connect.*username-password"):
        await bad_auth.open()
    with pytest.raises(SagawayError, match="bad Redis URL"):
        RedisStore("http://127.0.0.1:6379")


async def test_indexes_follow_parked_sagas(stores: Callable[[str], RedisStore]) -> None:
    # A parked saga sits in its definition's parked zset (score parked_until), where claim
    # finds the due ones by range, never in the free one; taking it moves it to leased.
    store = stores("park")
    await store.open()
    for i in range(4):
        new = pending(f"r{i}")
        new.status, new.owner, new.lease_expires_at = SagaStatus.RUNNING, "e1", T0 + 60
        await store.create(new)
        park = Park(f"reply:step{i}", T0 + 10 * (i + 1))
        await store.commit(f"r{i}", "e1", Change(park=park), T0 + 1)
    await assert_indexes_match(store)
    claimed = await store.claim("e2", now=T0 + 20, lease_seconds=30, definitions=[DEF], limit=9)
    assert sorted(r.id for r in claimed) == ["r0", "r1"]  # due at T0+10 and T0+20 (<= now)
    await assert_indexes_match(store)
    taken = await store.acquire(
        "r3", "e3", now=T0 + 21, lease_seconds=30, statuses=[SagaStatus.RUNNING]
    )
    assert taken is not None
    await store.commit("r3", "e3", Change(unpark=True), T0 + 22)
    await store.commit("r0", "e2", Change(park=Park("reply:again", T0 + 90)), T0 + 22)
    await store.commit("r1", "e2", Change(SagaStatus.FAILED, unpark=True, release_lease=True), T0)
    await assert_indexes_match(store)
    assert [r.id for r in (await store.list_waiting()).items] == ["r2", "r0"]
    again = await store.claim("e4", now=T0 + 95, lease_seconds=30, definitions=[DEF], limit=9)
    assert sorted(r.id for r in again) == ["r0", "r2", "r3"]  # r3: its lease expired
    await assert_indexes_match(store)


async def test_find_ids_index_is_built_for_an_older_log(
    stores: Callable[[str], RedisStore],
) -> None:
    # A log written before P:ids existed (simulated by deleting it): opening it builds the
    # index, so find_ids (one ZRANGEBYLEX) sees every saga.
    store = stores("ids")
    await store.open()
    for saga_id in ("é-1", "é-2", "[x", "ab", "abc", "b"):
        await store.create(pending(saga_id))
    await store.redis.delete(f"{store.prefix}:ids", f"{store.prefix}:meta")
    await store.close()
    again = stores("ids")
    await again.open()
    assert await again.find_ids("ab", limit=5) == ["ab", "abc"]
    assert await again.find_ids("é-", limit=5) == ["é-1", "é-2"]
    assert await again.find_ids("[", limit=5) == ["[x"]
    assert await again.find_ids("", limit=3) == ["[x", "ab", "abc"]
    assert await again.find_ids("zz") == []
    await again.create(pending("abd"))
    assert await again.find_ids("ab", limit=5) == ["ab", "abc", "abd"]
