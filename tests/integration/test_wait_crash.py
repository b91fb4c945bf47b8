"""Crash tests of durable waits, with real processes: a worker parks sagas on a signal and on a
three-day sleep and is SIGKILLed while they wait. With no engine running, half the waiting
sagas get their signal (through an API-only engine, twice: one counts) and the other half do
not. An engine started later, past both the wait's timeout and the sleep's time (a clock
shifted ahead: everything was down meanwhile), applies the recorded signals, times out the
rest and wakes the sleepers. Every saga ends exactly once, every effect ran once."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from wait_crash_saga import THREE_DAYS, Effects, build

from sagaway import Engine, EventType, SagaStatus
from sagaway.clock import SystemClock
from servers import durable_store_url

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("wait_crash_worker.py")
N = 10


class ShiftedClock(SystemClock):
    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        return super().now() + self.offset


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with durable_store_url(request.param, tmp_path, "wcrash") as url:
        yield url


async def test_engine_killed_while_sagas_wait_every_saga_ends_once(
    store_url: str, tmp_path: Path
) -> None:
    effects_db = tmp_path / "effects.db"
    effects = Effects(effects_db)
    worker = await asyncio.create_subprocess_exec(
        *(sys.executable, str(WORKER), store_url, str(effects_db), str(N)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), timeout=120)
        assert line.strip() == b"parked", line
    finally:
        worker.send_signal(signal.SIGKILL)
        _, err = await worker.communicate()
    assert worker.returncode == -signal.SIGKILL, err.decode()[-2000:]

    waiting, sleeping = build(effects)
    # Nobody runs the sagas now: an API-only engine records signals for half of them.
    async with Engine(store_url, execute=False, owner_id="api") as api:
        page = await api.list_waiting("signal:confirmed", limit=100)
        assert page.total == N
        assert all(s.owner is None for s in page.items), "parked sagas hold no lease"
        signalled = sorted(s.id for s in page.items)[: N // 2]
        for saga_id in signalled:
            for _ in range(2):  # delivered twice (a retried webhook): recorded once
                await api.signal(saga_id, "confirmed", {"ok": True}, signal_id=f"evt-{saga_id}")
        sleepers = [s.id for s in (await api.list_waiting("timer", limit=100)).items]
        assert len(sleepers) == N

    # Everything was down past every timeout and timer: the next engine finishes them all.
    engine = Engine(
        store_url,
        sagas=[waiting, sleeping],
        owner_id="restarted",
        clock=ShiftedClock(THREE_DAYS + 60),
        recovery_interval=0.05,
    )
    async with engine:
        ids = [s.id for s in page.items] + sleepers
        finals = {saga_id: await engine.wait(saga_id, timeout=60) for saga_id in ids}
        histories = {saga_id: (await engine.get(saga_id)).history for saga_id in ids}

    runs = effects.runs()
    assert all(count == 1 for count in runs.values()), f"an effect ran twice: {runs}"
    for saga_id, record in finals.items():
        ends = Counter(
            e.type
            for e in histories[saga_id]
            if e.type
            in (EventType.SAGA_SUCCEEDED, EventType.SAGA_COMPENSATED, EventType.SAGA_FAILED)
        )
        assert sum(ends.values()) == 1, f"saga {saga_id} ended {ends}"
        assert record.waiting_for is None
        assert record.owner is None
        if saga_id in sleepers:
            assert record.status is SagaStatus.SUCCEEDED
            assert runs[f"{saga_id}:wake:forward"] == 1
        elif saga_id in signalled:
            assert record.status is SagaStatus.SUCCEEDED, record.error
            assert record.output("confirmed") == {"ok": True}
            assert runs[f"{saga_id}:ship:forward"] == 1
            received = [e for e in histories[saga_id] if e.type is EventType.SIGNAL_RECEIVED]
            assert len(received) == 1
        else:
            assert record.status is SagaStatus.COMPENSATED
            assert record.error == "timed out waiting for signal 'confirmed'"
            assert runs[f"{saga_id}:reserve:compensation"] == 1
            assert f"{saga_id}:ship:forward" not in runs
