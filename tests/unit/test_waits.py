"""Durable waits (``Saga.wait``, ``Saga.sleep``, ``Engine.signal``) on the memory store and on
SQLite, on the virtual clock: the scenarios of ``waitkit``."""

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import waitkit
from sagaway import DefinitionError, Saga
from waitkit import Waits


@pytest.fixture(params=["memory", "sqlite"])
def kit(request: pytest.FixtureRequest, tmp_path: Path) -> Waits:
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'sagas.db'}"
    return Waits(url)


@pytest.mark.parametrize("scenario", waitkit.ALL, ids=lambda f: f.__name__.removeprefix("check_"))
async def test_waits(kit: Waits, scenario: Callable[[Waits], Coroutine[Any, Any, None]]) -> None:
    await scenario(kit)


def test_bad_wait_declarations_fail_at_import_time() -> None:
    saga = Saga("wait-bad-declarations")
    with pytest.raises(DefinitionError, match="timeout is required"):
        saga.wait("confirmed", timeout=None)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="bad signal name"):
        saga.wait("has space", timeout=1)
    with pytest.raises(DefinitionError, match="seconds or until"):
        saga.sleep("nap")
    with pytest.raises(DefinitionError, match="seconds >= 0"):
        saga.sleep("nap", seconds=-1)


async def test_the_saga_deadline_ends_a_wait_and_compensates() -> None:
    from sagaway import Engine, SagaStatus, StepContext
    from sagaway.testing import VirtualClock

    clock = VirtualClock(auto_advance=False)
    released: list[str] = []
    saga = Saga("wait-deadline", deadline=60)

    @saga.step
    async def reserve(ctx: StepContext, order: dict[str, int]) -> None:
        return None

    @reserve.compensation
    async def release(ctx: StepContext, order: dict[str, int], output: None) -> None:
        released.append(ctx.saga_id)

    saga.wait("confirmed", timeout=900)
    async with Engine("memory://", sagas=[saga], clock=clock, recovery_interval=3600) as engine:
        saga_id = await engine.start(saga, {"n": 1})
        for _ in range(100):
            parked = await engine.store.get(saga_id, history=False)
            if parked.waiting_for is not None:
                break
            await asyncio.sleep(0)
        assert parked.parked_until == clock.now() + 60, "the deadline comes before the timeout"
        clock.advance(60)
        await engine.recover()
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "deadline expired"
    assert released == [saga_id]
