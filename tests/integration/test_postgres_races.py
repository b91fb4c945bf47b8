"""PostgreSQL behaviour under real concurrency and real connection loss: two processes creating
the same idempotency keys at once, and the LISTEN connection being killed by the server.

Each test works in a schema of its own, dropped afterwards. Nothing waits on time: processes are
released together by a line on their stdin, and wake-ups are awaited as events (with a bound on
a hang, not a timing assumption).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from sagaway.state import Event, EventType, NewSaga
from sagaway.store.postgres import PostgresStore
from servers import (
    POSTGRES_URL,
    fresh_pg_schema,
    pg_schema_url,
)

WORKER = Path(__file__).with_name("pg_create_worker.py")
KEYS = 300


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with fresh_pg_schema("race") as name:
        yield name


async def test_two_processes_creating_the_same_keys_at_once_create_each_saga_once(
    schema: str,
) -> None:
    url = pg_schema_url(schema)
    async with PostgresStore(url):  # the schema exists before either process races to make it
        pass
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            url,
            name,
            str(KEYS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for name in ("p1", "p2")
    ]
    for proc in procs:  # both connected and waiting
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
        assert line.strip() == b"ready", line
    # Make the two batches overlap for certain: a transaction of the test holds a lock that
    # both INSERTs wait for; once both are seen waiting, releasing it lets them run together,
    # each with a snapshot taken before the other commits (the case where a create finds the
    # key taken by a transaction it cannot see yet, and must look again).
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        gate = admin.transaction()
        await gate.start()
        await admin.execute(f'LOCK TABLE "{schema}".sagaway_instances IN SHARE MODE')
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        await _until_waiting(admin, schema, 2)
        await gate.commit()
    finally:
        await admin.close()
    outputs = [await asyncio.wait_for(proc.communicate(), timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
    first, second = (json.loads(out) for out, _ in outputs)

    for key in first:
        (id1, created1), (id2, created2) = first[key], second[key]
        assert id1 == id2, f"{key}: two sagas for one key"
        assert created1 + created2 == 1, f"{key}: created by both or by neither"

    async with PostgresStore(url) as store:
        page = await store.list_sagas(limit=1000)
        assert page.total == KEYS
        by_key = {record.idempotency_key: record.id for record in page.items}
    assert by_key == {key: first[key][0] for key in first}


async def _until_waiting(admin: asyncpg.Connection, schema: str, count: int) -> None:
    """Return once ``count`` sessions wait for a lock on the schema's instances table."""
    query = (
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT l.granted AND c.relname = 'sagaway_instances' AND n.nspname = $1"
    )
    for _ in range(6000):  # a bound on a hang (60 s), not a timing assumption
        if await admin.fetchval(query, schema) >= count:
            return
        await asyncio.sleep(0.01)  # polling the condition, not waiting for it to happen
    raise AssertionError(f"the {count} creates never queued on the lock")


async def _listen_backends(channel: str) -> list[int]:
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        rows = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE query ILIKE $1", f"%LISTEN%{channel}%"
        )
        return [row["pid"] for row in rows]
    finally:
        await admin.close()


async def _terminate(pids: list[int]) -> None:
    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


def _pending(saga_id: str) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name="listen",
        version=1,
        input={},
        at=1_000.0,
        events=[Event(at=1_000.0, type=EventType.SAGA_CREATED)],
    )


async def test_listen_reconnects_after_the_server_kills_it_and_wakes_its_workers(
    schema: str,
) -> None:
    wakeups: asyncio.Queue[None] = asyncio.Queue()
    url = pg_schema_url(schema)
    async with PostgresStore(url) as listener, PostgresStore(url) as writer:
        listener.on_work(lambda: wakeups.put_nowait(None))
        # A claim returns only once LISTEN is in place (see PostgresStore.claim).
        await listener.claim("w", now=1_000.0, lease_seconds=1, definitions=[], limit=1)
        await writer.create(_pending("before"))
        await asyncio.wait_for(wakeups.get(), timeout=30)  # the connection works

        (pid,) = await _listen_backends(listener._channel)
        await _terminate([pid])
        # Back after the loss, the store wakes its workers once at once (notifications sent
        # while it was away are lost, so they must look for work themselves)...
        await asyncio.wait_for(wakeups.get(), timeout=30)
        (new_pid,) = await _listen_backends(listener._channel)
        assert new_pid != pid
        # ... and notifications reach it again on the new connection.
        while not wakeups.empty():
            wakeups.get_nowait()
        await writer.create(_pending("after"))
        await asyncio.wait_for(wakeups.get(), timeout=30)
