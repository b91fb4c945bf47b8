"""Cancel answers what will happen (issue 8, item 8).

Before: a cancel during the last step was accepted and did nothing (the step finished and the
saga succeeded), and a cancel reaching another engine's saga could be overtaken by the next
step's start. Now a cancel is accepted only if the store can guarantee it takes effect: the
runner starts each step it can still stop before with a write that fails if a cancel is
recorded (``Change.unless_cancelled``), and the store refuses a cancel once the last such step
has started, recording the refusal. Deterministic: steps are held with ``Faults.hang`` and the
engines' background loops never run during a test.
"""

from __future__ import annotations

import pytest
from sagakit import Kit, Order

from sagaway import Engine, EventType, InvalidTransition, Phase, SagaStatus
from sagaway.errors import CancelRefused
from sagaway.store.memory import MemoryStore
from sagaway.testing import saga_engine
from sagaway.testing.clock import VirtualClock


def _refusals(history: list) -> list[str | None]:  # type: ignore[type-arg]
    return [e.detail for e in history if e.type is EventType.CANCEL_REFUSED]


async def test_a_cancel_during_the_last_step_is_refused_and_recorded(
    kit: Kit, order: Order
) -> None:
    hang = kit.faults.hang("c")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        with pytest.raises(CancelRefused) as refused:
            await h.engine.cancel(saga_id)
        assert isinstance(refused.value, InvalidTransition)
        assert "too late" in refused.value.reason
        assert "'c'" in refused.value.reason
        during = await h.engine.get(saga_id)
        assert not during.cancel_requested
        assert _refusals(during.history) == [refused.value.reason]
        hang.release()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.SUCCEEDED  # what the refusal said would happen
    assert kit.trace == ["do:a", "do:b", "do:c"]


async def test_a_cancel_of_a_finished_or_compensating_saga_is_refused_and_recorded(
    kit: Kit, order: Order
) -> None:
    kit.faults.reject("c", "no stock")
    hang = kit.faults.hang("b", phase=Phase.COMPENSATION)
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        with pytest.raises(CancelRefused, match="already compensating"):
            await h.engine.cancel(saga_id)
        hang.release()
        record = await h.wait(saga_id)
        assert record.status is SagaStatus.COMPENSATED
        with pytest.raises(CancelRefused, match="COMPENSATED: nothing to cancel"):
            await h.engine.cancel(saga_id)
        record = await h.engine.get(saga_id)
    assert len(_refusals(record.history)) == 2
    assert record.error == "no stock"  # the refused cancels changed nothing


@pytest.mark.parametrize("shared", [False, True], ids=["own-record", "store-record"])
async def test_a_cancel_accepted_elsewhere_always_stops_the_next_step(
    kit: Kit, order: Order, shared: bool
) -> None:
    # The saga runs on one engine; an API-only engine (another process) records the cancel
    # while step b runs. The running engine is never told (no lease renewal happens here):
    # only the log can stop it, and it must, at c's start. Unless the run drives the record
    # the store keeps (the memory store's ``shares_records``): then it sees the cancel at once.
    store, clock = MemoryStore(), VirtualClock(auto_advance=True)
    store.shares_records = shared  # False: the run keeps its own record, as on durable stores
    hang = kit.faults.hang("b")
    async with saga_engine(kit.saga, store=store, clock=clock) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        api = Engine(store, sagas=[kit.saga], execute=False, owner_id="api", clock=clock)
        async with api:
            accepted = await api.cancel(saga_id)
        assert accepted.cancel_requested
        assert h.engine._runs[saga_id].cancel_requested is shared, "the runner was told?"
        hang.release()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "cancelled"
    assert kit.trace == ["do:a", "do:b", "undo:b", "undo:a"]
    assert record.step("c") is None
    assert not record.cancel_requested


async def test_a_cancel_after_the_last_stoppable_step_started_elsewhere_is_refused(
    kit: Kit, order: Order
) -> None:
    store, clock = MemoryStore(), VirtualClock(auto_advance=True)
    hang = kit.faults.hang("c")
    async with saga_engine(kit.saga, store=store, clock=clock) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        api = Engine(store, sagas=[kit.saga], execute=False, owner_id="api", clock=clock)
        async with api:
            with pytest.raises(CancelRefused, match="'c'"):
                await api.cancel(saga_id)
        hang.release()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert len(_refusals(record.history)) == 1


async def test_without_the_definition_only_an_unstarted_saga_can_be_cancelled(
    kit: Kit, order: Order
) -> None:
    store, clock = MemoryStore(), VirtualClock(auto_advance=True)
    hang = kit.faults.hang("a")
    admin = Engine(store, sagas=[], execute=False, owner_id="cli", clock=clock)  # knows none
    api = Engine(store, sagas=[kit.saga], execute=False, owner_id="api", clock=clock)
    async with admin, api:
        queued = await api.start(kit.saga, order)  # PENDING: no step has started
        assert (await admin.cancel(queued)).cancel_requested
        async with saga_engine(kit.saga, store=store, clock=clock) as h:
            running = await h.start(kit.saga, order)
            await hang.entered.wait()
            with pytest.raises(CancelRefused, match="steps have started"):
                await admin.cancel(running)
            await h.engine.recover()  # the worker claims the cancelled PENDING saga
            cancelled = await h.wait(queued)
            hang.release()
            finished = await h.wait(running)
    assert cancelled.status is SagaStatus.COMPENSATED
    assert cancelled.steps == {}, "no step of it ever ran"
    assert finished.status is SagaStatus.SUCCEEDED


async def test_asking_twice_is_accepted_once(kit: Kit, order: Order) -> None:
    hang = kit.faults.hang("a")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        await h.engine.cancel(saga_id)
        again = await h.engine.cancel(saga_id)
        assert again.cancel_requested
        hang.release()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    requests = [e for e in record.history if e.type is EventType.CANCEL_REQUESTED]
    assert len(requests) == 2, "the first request, then the stop it caused: no second request"
