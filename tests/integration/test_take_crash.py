"""Crash tests of the one-write signal path (``Change.take``), with real processes. A signal
is applied by reading the parked saga, deciding, and one conditional write that takes the
saga and records the signal. A signaller SIGKILLed between its read and that write leaves the
saga parked with nothing recorded; one killed just after the write leaves the signal recorded
under a lease nobody renews. The sender, having no answer, sends the same signal id again
through a fresh engine: the first signal is applied then, the second is a duplicate; both
sagas end once, every effect ran once, each signal is recorded once."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_wait_crash import ShiftedClock
from wait_crash_saga import Effects, build

from sagaway import Engine, EventType, SagaStatus
from sagaway.store import open_store
from servers import durable_store_url

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("take_crash_worker.py")


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with durable_store_url(request.param, tmp_path, "tcrash") as url:
        yield url


async def _kill_at(store_url: str, effects_db: Path, mode: str, saga_id: str) -> None:
    """Run the signaller until it reports the point ``mode`` names, then SIGKILL it."""
    worker = await asyncio.create_subprocess_exec(
        *(sys.executable, str(WORKER), store_url, str(effects_db), mode, saga_id),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), timeout=120)
    finally:
        worker.send_signal(signal.SIGKILL)
        _, err = await worker.communicate()
    assert line.strip() == (b"read" if mode == "before" else b"written"), err.decode()[-2000:]
    assert worker.returncode == -signal.SIGKILL


async def test_a_signaller_killed_around_its_one_write_loses_and_doubles_nothing(
    store_url: str, tmp_path: Path
) -> None:
    effects_db = tmp_path / "effects.db"
    effects = Effects(effects_db)
    waiting, sleeping = build(effects)
    async with Engine(store_url, sagas=[waiting, sleeping], owner_id="parker") as parker:
        ids = [await parker.start(waiting, {"n": i}) for i in range(2)]
        for _ in range(2000):
            if (await parker.list_waiting("signal:confirmed")).total == 2:
                break
            await asyncio.sleep(0.01)
    killed_before, killed_after = ids

    await _kill_at(store_url, effects_db, "before", killed_before)
    await _kill_at(store_url, effects_db, "after", killed_after)
    async with open_store(store_url) as store:
        untouched = await store.get(killed_before)
        recorded = await store.get(killed_after)
    assert (untouched.waiting_for, untouched.owner) == ("signal:confirmed", None)
    assert not any(e.type is EventType.SIGNAL_RECEIVED for e in untouched.history)
    assert recorded.waiting_for is None
    assert recorded.owner == "doomed-after"  # its lease runs out: nobody renews it
    assert [e.detail for e in recorded.history if e.type is EventType.SIGNAL_RECEIVED] == [
        f"confirmed evt-{killed_after}"
    ]

    # The sender had no answer for either: it sends both again, with the same ids, through an
    # engine that starts once the dead signaller's lease has run out.
    engine = Engine(
        store_url,
        sagas=[waiting, sleeping],
        owner_id="restarted",
        clock=ShiftedClock(60),
        recovery_interval=0.05,
    )
    async with engine:
        receipts = [
            await engine.signal(saga_id, "confirmed", {"ok": True}, signal_id=f"evt-{saga_id}")
            for saga_id in ids
        ]
        finals = [await engine.wait(saga_id, timeout=60) for saga_id in ids]
        histories = [(await engine.get(saga_id)).history for saga_id in ids]
    assert [r.duplicate for r in receipts] == [False, True]
    for saga_id, final, history in zip(ids, finals, histories, strict=True):
        assert final.status is SagaStatus.SUCCEEDED, final.error
        received = [e.detail for e in history if e.type is EventType.SIGNAL_RECEIVED]
        assert received == [f"confirmed evt-{saga_id}"]
        ends = [e for e in history if e.type is EventType.SAGA_SUCCEEDED]
        assert len(ends) == 1
    runs = effects.runs()
    assert all(count == 1 for count in runs.values()), f"an effect ran twice: {runs}"
    for saga_id in ids:
        assert runs[f"{saga_id}:ship:forward"] == 1
