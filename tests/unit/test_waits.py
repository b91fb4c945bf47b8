"""Durable waits (``Saga.wait``, ``Saga.sleep``, ``Engine.signal``) on the memory store and on
SQLite, on the virtual clock: the scenarios of ``waitkit``."""

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import waitkit
from sagaway import DefinitionError, Engine, EventType, Saga, StepContext
from waitkit import ORDER, PAYMENT_TIMEOUT, Order, Waits


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


@pytest.mark.parametrize("second_engine", [False, True], ids=["same-engine", "other-engine"])
async def test_a_duplicate_signal_racing_the_finish_is_a_duplicate(
    kit: Waits, second_engine: bool
) -> None:
    """The wait is the saga's last step, so the signal's write finishes the saga. That write
    is held (a gate in the store's commit) while the same signal id comes again, through the
    same engine or another one: one of the two is applied, the other gets a duplicate receipt
    once that is written, never ``NotWaiting`` and never a second application. Through the
    same engine the duplicate waits for the first; another engine reads the same parked row
    and takes it in its own write (``Change.take``) while the first write is held, so the
    first write finds the row written, writes nothing, and reports the duplicate."""
    from sagaway import SagaStatus

    saga = Saga(f"wait-last-{id(kit)}")

    @saga.step
    async def before(ctx: StepContext, order: Order) -> None:
        return None

    saga.wait("go", timeout=PAYMENT_TIMEOUT)
    engine = Engine(kit.store, sagas=[saga], owner_id="e1", clock=kit.clock, recovery_interval=3600)
    other = Engine(kit.store, sagas=[saga], owner_id="e2", clock=kit.clock, recovery_interval=3600)
    async with engine, other:
        saga_id = await engine.start(saga, ORDER)
        record = None
        for _ in range(1000):
            record = await kit.store.get(saga_id, history=False)
            if record.waiting_for is not None:
                break
            await asyncio.sleep(0)  # the run parks the saga on this loop
        assert record is not None
        assert record.waiting_for == "signal:go"
        real_commit = kit.store.commit
        held, release = asyncio.Event(), asyncio.Event()

        async def gated_commit(*args: Any, **kwargs: Any) -> Any:
            change = args[2] if len(args) > 2 else kwargs["change"]
            if not held.is_set() and any(
                e.type is EventType.SIGNAL_RECEIVED for e in change.events
            ):
                held.set()
                await release.wait()
            return await real_commit(*args, **kwargs)

        kit.store.commit = gated_commit  # type: ignore[method-assign]
        first = asyncio.create_task(engine.signal(saga_id, "go", signal_id="s-1"))
        await held.wait()
        again = asyncio.create_task(
            (other if second_engine else engine).signal(saga_id, "go", signal_id="s-1")
        )
        for _ in range(20):
            await asyncio.sleep(0)  # the duplicate gets as far as it can while the write waits
        assert again.done() is second_engine
        release.set()
        receipts = await asyncio.gather(first, again)
        full = await engine.get(saga_id)
    applied = [True, False] if second_engine else [False, True]
    assert [r.duplicate for r in receipts] == applied
    assert full.status is SagaStatus.SUCCEEDED
    received = [e.detail for e in full.history if e.type is EventType.SIGNAL_RECEIVED]
    assert received == ["go s-1"]
