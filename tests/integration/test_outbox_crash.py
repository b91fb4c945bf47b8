"""A process killed while committing remote steps' writes (RUNNING row + outbox message +
park, see ``outbox_writer.py``) leaves, for every saga, all three or none of them: on SQLite
(group commit), PostgreSQL (batch statement) and Redis (one script). Every acknowledged write
is there. The kill lands while many writes are in flight (16 at a time)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from outbox_writer import OWNER, T0, remote_start
from test_crash_recovery import store_url  # noqa: F401 - the fixture: a log on each store

from sagaway.state import Event, EventType, NewSaga, OutboxMessage, Phase, SagaStatus
from sagaway.store import OutboxStore, open_store

WRITER = Path(__file__).with_name("outbox_writer.py")
N = 1_500  # far more than get written before the kill
KILL_AFTER = 60
pytestmark = pytest.mark.slow


async def test_a_killed_writer_leaves_each_outbox_message_with_its_transition(
    store_url: str,  # noqa: F811
) -> None:
    ids = [f"s{i:04}" for i in range(N)]
    async with open_store(store_url) as store:
        for first in range(0, N, 100):
            await asyncio.gather(
                *(
                    store.create(
                        NewSaga(
                            id=i,
                            name="remote",
                            version=1,
                            input=None,
                            at=T0,
                            status=SagaStatus.RUNNING,
                            owner=OWNER,
                            lease_expires_at=T0 + 3_600,
                            events=[Event(at=T0, type=EventType.SAGA_STARTED)],
                        )
                    )
                    for i in ids[first : first + 100]
                )
            )
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(WRITER), store_url, ",".join(ids), stdout=asyncio.subprocess.PIPE
    )
    acked: list[str] = []
    assert child.stdout is not None
    while len(acked) < KILL_AFTER:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line, "the writer ended before it was killed"
        acked.append(line.decode().split()[1])
    child.send_signal(signal.SIGKILL)
    await child.wait()

    async with open_store(store_url) as store:
        assert isinstance(store, OutboxStore)
        # The server may still run what the killed process sent last (PostgreSQL finishes a
        # statement whose client is gone; Redis runs the scripts it received): read until two
        # reads agree, so the check sees one settled state.
        previous, (messages, records) = None, await _read(store, ids)
        for _ in range(50):
            if (messages, records) == previous:
                break
            previous, (messages, records) = (messages, records), await _read(store, ids)
        written = set()
        for saga_id, (started, waiting_for, parked_until, owner) in records.items():
            parked = (waiting_for, parked_until, owner) == (
                "reply:inventory.reserve",
                T0 + 30,
                None,
            )
            untouched = (waiting_for, owner) == (None, OWNER)
            assert (started, saga_id in messages) == (parked, parked), saga_id
            assert parked or untouched, saga_id
            if started:
                written.add(saga_id)
                assert messages[saga_id] == remote_start(saga_id).outbox[0]
        assert set(acked) <= written
        assert len(written) < N, "the kill came after every write: nothing was tested"
        assert len(messages) == len(written) == await store.outbox_count()
        assert (await store.list_waiting(limit=N)).total == len(written)


async def _read(
    store: OutboxStore, ids: list[str]
) -> tuple[dict[str, OutboxMessage], dict[str, tuple[bool, str | None, float | None, str | None]]]:
    messages = {m.saga_id: m for m in await store.outbox_pending(limit=N + 1)}
    records = {}
    for saga_id in ids:
        r = await store.get(saga_id, history=False)
        started = r.step("reserve", Phase.FORWARD) is not None
        records[saga_id] = (started, r.waiting_for, r.parked_until, r.owner)
    return messages, records
