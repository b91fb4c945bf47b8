"""Recovery from the log: sagas a crashed engine left behind, leases, fencing, takeover.

A crash is simulated by writing, by hand, the records a dead engine would have left in a
MemoryStore, then starting a new Engine on that store; ``engine.recover()`` is the
deterministic recovery pass (no waiting for a background loop).
"""

import asyncio
from typing import Any

from sagakit import Kit, Order, Receipt

from sagaway import (
    Change,
    Engine,
    EventType,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
    StoreError,
)
from sagaway.state import NewSaga
from sagaway.store.memory import MemoryStore
from sagaway.testing import VirtualClock, saga_engine

S, F = StepStatus, EventType
C, FW = Phase.COMPENSATION, Phase.FORWARD
T0 = 1_700_000_000.0
ORDER = Order(id="o-1", amount=50)


async def crashed(
    store: MemoryStore,
    *,
    saga_id: str = "crashed-1",
    owner: str = "dead-engine",
    lease_expires_at: float = T0 - 1,
    status: SagaStatus = SagaStatus.RUNNING,
    steps: list[StepRecord] | None = None,
) -> str:
    """Write what an engine that died mid-saga leaves: by default step a SUCCEEDED and step b
    RUNNING (its action may or may not have happened), under a lease that has expired."""
    a_out = Receipt(step="a", key=f"{saga_id}:a:forward", amount=50).model_dump()
    rows = steps or [
        StepRecord("a", FW, S.SUCCEEDED, attempts=1, output=a_out, started_at=T0 - 10),
        StepRecord("b", FW, S.RUNNING, attempts=1, started_at=T0 - 9),
    ]
    created, _ = await store.create(
        NewSaga(
            id=saga_id,
            name="order",
            version=1,
            input=ORDER.model_dump(),
            at=T0 - 10,
            status=status,
            owner=owner,
            lease_expires_at=lease_expires_at,
            steps=rows,
        )
    )
    return created


def new_engine(store: MemoryStore, kit: Kit, clock: VirtualClock, owner: str, **kw: Any) -> Engine:
    kw.setdefault("recovery_interval", 3600.0)
    kw.setdefault("lease_seconds", 30.0)
    return Engine(store, sagas=[kit.saga], clock=clock, owner_id=owner, **kw)


async def test_an_uncertain_step_is_retried_with_the_same_idempotency_key() -> None:
    store, kit = MemoryStore(), Kit()
    saga_id = await crashed(store)
    kit.ledger.apply(f"{saga_id}:b:forward", 50)  # b had reached the participant before the crash
    async with saga_engine(kit.saga, store=store, owner_id="new-engine") as h:
        record = await h.wait(saga_id)  # opening the engine ran the first recovery pass
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.trace == ["do:b", "do:c"], "a's success is in the log: it is not run again"
    ctx = kit.contexts[0]
    assert ctx.idempotency_key == f"{saga_id}:b:forward"
    assert ctx.attempt == 2
    assert kit.results_seen[0]["a"] == Receipt(step="a", key=f"{saga_id}:a:forward", amount=50)
    b_key = f"{saga_id}:b:forward"
    kit.ledger.assert_exactly_once(f"{saga_id}:c:forward", b_key, calls={b_key: 2})
    assert kit.ledger.duplicates == {b_key: 1}
    b = record.step("b")
    assert b is not None
    assert b.attempts == 2
    assert b.started_at == T0 - 9, "the step keeps its first start time"
    types = [(e.type, e.step) for e in record.history]
    assert (F.SAGA_CLAIMED, None) in types
    assert (F.STEP_RESUMED, "b") in types


async def test_on_uncertain_compensate_compensates_the_uncertain_step_and_earlier_ones() -> None:
    store, kit = MemoryStore(), Kit(on_uncertain="compensate")
    saga_id = await crashed(store)
    kit.ledger.apply(f"{saga_id}:a:forward", 50)  # a's effect, as the dead engine left it
    async with saga_engine(kit.saga, store=store) as h:
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "b: outcome uncertain"
    b = record.step("b")
    assert b is not None
    assert b.status is S.FAILED
    assert b.uncertain
    assert kit.trace == ["undo:b", "undo:a"], "b is never re-run, and is compensated"
    assert kit.undo_args[0][2] is None, "b never returned: its compensation gets no output"
    assert kit.ledger.tombstones == {f"{saga_id}:b:forward"}, "a late b would be refused"
    assert kit.ledger.live == {}


async def test_a_live_lease_of_another_engine_is_respected_until_it_expires() -> None:
    store, kit, clock = MemoryStore(), Kit(), VirtualClock()
    saga_id = await crashed(store, lease_expires_at=T0 + 10)
    engine = new_engine(store, kit, clock, "other")
    assert await engine.recover() == 0
    assert not await engine.resume(saga_id)
    clock.advance(11)
    assert await engine.recover() == 1
    record = await engine.wait(saga_id, timeout=5)
    await engine.close()
    assert record.status is SagaStatus.SUCCEEDED


async def test_restarting_under_the_same_owner_id_takes_its_sagas_back_at_once() -> None:
    store, kit, clock = MemoryStore(), Kit(), VirtualClock()
    saga_id = await crashed(store, owner="worker-1", lease_expires_at=T0 + 30)
    stranger = new_engine(store, kit, clock, "worker-2")
    assert await stranger.recover(include_own=True) == 0, "not its saga, lease still live"
    async with new_engine(store, kit, clock, "worker-1") as engine:  # open(): include_own
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED


async def test_a_stale_engine_cannot_commit_once_its_lease_was_taken_over() -> None:
    store, kit, clock = MemoryStore(), Kit(), VirtualClock()
    hang = kit.faults.hang("b", times=1)  # only the first engine's call hangs
    async with new_engine(store, kit, clock, "slow") as slow:
        saga_id = await slow.start(kit.saga, ORDER)
        await hang.entered.wait()  # slow is inside b, and stops renewing its lease
        clock.advance(31)
        async with new_engine(store, kit, clock, "fast") as fast:  # claims at open
            record = await fast.wait(saga_id, timeout=5)
            assert record.status is SagaStatus.SUCCEEDED
            hang.release()  # slow's b now returns, and slow tries to record it
            await slow.wait(saga_id, timeout=5)
            assert slow.running == 0, "LeaseLost stopped the stale engine"
    final = await store.get(saga_id)
    assert final.status is SagaStatus.SUCCEEDED
    assert final.step("c").attempts == 1  # type: ignore[union-attr]
    assert kit.trace.count("do:c") == 1, "the stale engine never went on to c"
    keys = [f"{saga_id}:{step}:forward" for step in "abc"]
    kit.ledger.assert_exactly_once(*keys, calls={keys[1]: 2})  # slow's call, then fast's
    assert [e.detail for e in final.history if e.type is F.SAGA_CLAIMED] == ["fast"]


async def test_a_running_engine_renews_the_leases_of_its_sagas() -> None:
    renewed = asyncio.Event()

    class Spy(MemoryStore):
        async def renew_leases(self, owner: str, *, now: float, lease_seconds: float) -> Any:
            result = await super().renew_leases(owner, now=now, lease_seconds=lease_seconds)
            renewed.set()
            return result

    store, kit, clock = Spy(), Kit(), VirtualClock()
    hang = kit.faults.hang("b")
    async with new_engine(store, kit, clock, "e1") as engine:
        saga_id = await engine.start(kit.saga, ORDER)
        await hang.entered.wait()
        assert (await store.get(saga_id)).lease_expires_at == T0 + 30
        clock.advance(20)
        engine.wake()  # run the maintenance pass now instead of on its timer
        await renewed.wait()
        assert (await store.get(saga_id)).lease_expires_at == T0 + 20 + 30
        clock.advance(20)  # past the original expiry, within the renewed one
        other = new_engine(store, kit, clock, "e2")
        assert await other.recover() == 0
        hang.release()
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED


async def test_a_cancel_reaches_the_engine_running_the_saga_through_lease_renewal() -> None:
    renewed = asyncio.Event()

    class Spy(MemoryStore):
        async def renew_leases(self, owner: str, *, now: float, lease_seconds: float) -> Any:
            result = await super().renew_leases(owner, now=now, lease_seconds=lease_seconds)
            renewed.set()
            return result

    store, kit, clock = Spy(), Kit(), VirtualClock()
    hang = kit.faults.hang("b")
    api = new_engine(store, kit, clock, "api", execute=False)
    async with new_engine(store, kit, clock, "worker") as worker:
        saga_id = await worker.start(kit.saga, ORDER)
        await hang.entered.wait()
        await api.cancel(saga_id)  # another process: it can only flag the saga in the log
        worker.wake()
        await renewed.wait()
        hang.release()
        record = await worker.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "cancelled"


async def test_an_api_only_engine_queues_sagas_for_a_worker_to_claim() -> None:
    store, kit, clock = MemoryStore(), Kit(), VirtualClock()
    api = await new_engine(store, kit, clock, "api", execute=False).open()
    saga_id = await api.start(kit.saga, ORDER)
    queued = await store.get(saga_id)
    assert queued.status is SagaStatus.PENDING
    assert [e.type for e in queued.history] == [F.SAGA_CREATED]
    assert kit.trace == []
    async with new_engine(store, kit, clock, "worker") as worker:
        record = await worker.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    waited = await api.wait(saga_id, timeout=5)  # polls the store: not its saga
    assert waited.status is SagaStatus.SUCCEEDED
    await api.close()


async def test_an_uncertain_compensation_is_resumed_with_the_same_key() -> None:
    store, kit = MemoryStore(), Kit()
    saga_id = "crashed-2"
    a_out = Receipt(step="a", key=f"{saga_id}:a:forward", amount=50).model_dump()
    saga_id = await crashed(
        store,
        saga_id=saga_id,
        status=SagaStatus.COMPENSATING,
        steps=[
            StepRecord("a", FW, S.SUCCEEDED, attempts=1, output=a_out),
            StepRecord("b", FW, S.FAILED, attempts=1, error="declined"),
            StepRecord("a", C, S.COMPENSATING, attempts=1),
        ],
    )
    async with saga_engine(kit.saga, store=store) as h:
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert kit.trace == ["undo:a"], "b failed for sure: only a is compensated"
    ctx, _, receipt = kit.undo_args[0]
    assert ctx.idempotency_key == f"{saga_id}:a:compensation"
    assert ctx.attempt == 2
    assert receipt == Receipt(step="a", key=f"{saga_id}:a:forward", amount=50)


async def test_a_saga_whose_log_write_failed_is_resumed_by_the_next_recovery_pass() -> None:
    class Flaky(MemoryStore):
        fail_next = False

        async def commit(self, saga_id: str, owner: str | None, change: Change, at: float) -> None:
            if self.fail_next:
                self.fail_next = False
                raise StoreError("disk full")
            await super().commit(saga_id, owner, change, at)

    store, kit, clock = Flaky(), Kit(), VirtualClock()
    hang = kit.faults.hang("a")
    async with new_engine(store, kit, clock, "e1") as engine:
        saga_id = await engine.start(kit.saga, ORDER)
        await hang.entered.wait()
        store.fail_next = True  # a's outcome cannot be recorded
        hang.release()
        stuck = await engine.wait(saga_id, timeout=5)
        assert stuck.status is SagaStatus.RUNNING, "the run stopped where the log says it is"
        assert await engine.recover() == 0, "orphans resume; they are not counted as claims"
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.trace == ["do:a", "do:a", "do:b", "do:c"], "a re-run under the same key"
    keys = [f"{saga_id}:{step}:forward" for step in "abc"]
    kit.ledger.assert_exactly_once(*keys, calls={keys[0]: 2})


async def test_an_uncertain_pivot_is_retried_even_with_on_uncertain_compensate() -> None:
    # The rule for a pivot found RUNNING after a crash: it has no compensation, so it cannot be
    # given up on (earlier steps compensated while its effect may stand); it is asked again
    # with the same key, and the participant's answer decides, whatever on_uncertain says.
    store = MemoryStore()
    kit = Kit(kinds={"b": "pivot", "c": "retriable"}, on_uncertain="compensate")
    saga_id = await crashed(store)
    kit.ledger.apply(f"{saga_id}:a:forward", 50)  # what the dead engine left applied
    kit.ledger.apply(f"{saga_id}:b:forward", 50)  # b (the pivot) reached the participant
    async with saga_engine(kit.saga, store=store) as h:
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.trace == ["do:b", "do:c"], "the pivot is asked again; a is not compensated"
    keys = [f"{saga_id}:{step}:forward" for step in "abc"]
    kit.ledger.assert_exactly_once(*keys, calls={keys[1]: 2})
    assert kit.ledger.live.keys() == set(keys)


async def test_an_uncertain_pivot_that_then_fails_compensates_the_steps_before_it() -> None:
    store = MemoryStore()
    kit = Kit(kinds={"b": "pivot", "c": "retriable"}, on_uncertain="compensate")
    kit.faults.reject("b", "card declined")  # the participant answers: it did not happen
    saga_id = await crashed(store)
    kit.ledger.apply(f"{saga_id}:a:forward", 50)
    async with saga_engine(kit.saga, store=store) as h:
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "card declined"
    assert kit.trace == ["undo:a"]
    assert kit.ledger.live == {}
