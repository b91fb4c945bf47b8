"""Failure semantics: business vs transient failures, timeouts, compensation retries, FAILED
sagas and the operator's retry."""

import asyncio

import pytest
from sagakit import Kit, Order

from sagaway import (
    EventType,
    InvalidTransition,
    Phase,
    RetryPolicy,
    SagaStatus,
    StepStatus,
)
from sagaway.testing import VirtualClock, saga_engine

S, F = StepStatus, EventType
C = Phase.COMPENSATION


async def test_business_failure_is_not_retried_and_compensates_succeeded_steps_in_reverse(
    kit: Kit, order: Order
) -> None:
    kit.faults.reject("c", "Insufficient funds")
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "Insufficient funds"
    assert kit.trace == ["do:a", "do:b", "undo:b", "undo:a"]
    c = record.step("c")
    assert c is not None
    assert c.status is S.FAILED
    assert c.attempts == 1, "a business failure is never retried"
    assert c.error == "Insufficient funds"
    assert not c.uncertain
    assert record.step("c", C) is None, "the failed step itself is not compensated"
    for name in "ab":  # one row per (step, phase): the action's row keeps its outcome
        assert record.step(name).status is S.SUCCEEDED  # type: ignore[union-attr]
        assert record.step(name, C).status is S.COMPENSATED  # type: ignore[union-attr]
    kit.ledger.assert_not_applied(*(kit.key(record.id, n) for n in "abc"))


async def test_failure_of_the_first_step_compensates_nothing(kit: Kit, order: Order) -> None:
    kit.faults.reject("a", "bad address")
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "bad address"
    assert kit.trace == []
    assert [key for key in record.steps if key[1] is C] == []


async def test_fails_when_rejects_only_the_chosen_inputs(kit: Kit) -> None:
    kit.faults.reject("b", "over limit", when=lambda o: o.amount > 100)
    async with saga_engine(kit.saga) as h:
        small = await h.run(kit.saga, Order(id="small", amount=10))
        big = await h.run(kit.saga, Order(id="big", amount=500))
    assert small.status is SagaStatus.SUCCEEDED
    assert big.status is SagaStatus.COMPENSATED
    assert big.error == "over limit"


async def test_transient_failure_is_retried_and_the_step_then_succeeds(
    kit: Kit, order: Order
) -> None:
    kit.faults.fail("b", times=2, exc=ConnectionResetError)
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.step("b").attempts == 3  # type: ignore[union-attr]
    retries = [e for e in record.history if e.type is F.STEP_RETRYING]
    assert [(e.step, e.attempt) for e in retries] == [("b", 1), ("b", 2)]
    assert retries[0].detail is not None
    assert retries[0].detail.startswith("ConnectionResetError: injected fault in b")


async def test_transient_failure_with_retries_spent_compensates(kit: Kit, order: Order) -> None:
    kit.faults.fail("b", times=None, exc=ConnectionError("connection refused"))
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.COMPENSATED
    b = record.step("b")
    assert b is not None
    assert b.status is S.FAILED
    assert b.attempts == 3, "FAST allows three attempts"
    assert b.error == "ConnectionError: connection refused"
    assert record.error == b.error
    assert kit.trace == ["do:a", "undo:a"]
    assert record.step("b", C) is None, "a failure with a known outcome is not compensated"


async def test_retry_backoff_follows_the_policy_on_the_virtual_clock(order: Order) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=1.0, multiplier=3.0, jitter=0)
    kit = Kit(steps=("a",), retry=policy)
    kit.faults.fail("a", times=2)
    clock = VirtualClock()
    async with saga_engine(kit.saga, clock=clock) as h:
        start = clock.now()
        saga_id = await h.start(kit.saga, order)
        await clock.wait_for_sleepers(1)
        assert clock.wakeups == [start + 1.0]
        assert h.engine.running == 1
        clock.advance(0.5)
        assert clock.sleepers == 1, "not due yet"
        clock.advance(0.5)
        await clock.wait_for_sleepers(1)
        assert clock.wakeups == [start + 1.0 + 3.0]
        clock.advance_to_next()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert clock.slept == [1.0, 3.0]
    assert record.step("a").finished_at == start + 4.0  # type: ignore[union-attr]


async def test_jitter_spreads_the_delay_within_its_fraction() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=3.0, jitter=0.2)
    delays = [policy.delay(2) for _ in range(200)]
    assert all(1.6 <= d <= 2.4 for d in delays)
    assert len(set(delays)) > 1
    assert 2.4 <= policy.delay(10) <= 3.6, "capped at max_delay before jitter"


async def test_timed_out_step_is_uncertain_so_its_own_compensation_runs_too(
    order: Order,
) -> None:
    """runner._needs_undo: a step that timed out may have taken effect at the participant, so
    unlike a plain failure it is compensated (with no output: its action never returned)."""
    kit = Kit(timeout=0.02, retry=RetryPolicy(max_attempts=2, initial_delay=0))
    hang = kit.faults.hang("b")
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert hang.count == 2, "each attempt hung and timed out"
    assert record.status is SagaStatus.COMPENSATED
    b = record.step("b")
    assert b is not None
    assert b.status is S.FAILED
    assert b.uncertain
    assert b.error == "timed out"
    assert b.attempts == 2
    assert kit.trace == ["do:a", "undo:b", "undo:a"]
    ctx, _, receipt = kit.undo_args[0]
    assert ctx.step == "b"
    assert receipt is None
    assert record.step("b", C).status is S.COMPENSATED  # type: ignore[union-attr]


async def test_step_that_finishes_within_its_timeout_is_not_affected(order: Order) -> None:
    kit = Kit(timeout=5.0)
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED


async def test_lost_response_is_retried_with_the_same_key_and_applied_once(
    kit: Kit, order: Order
) -> None:
    kit.faults.fail("b", times=1, after=True)  # b's effect lands, then the reply is lost
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    key = kit.key(record.id, "b")
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.ledger.calls[key] == 2
    assert kit.ledger.duplicates == {key: 1}
    kit.ledger.assert_exactly_once(*(kit.key(record.id, n) for n in "abc"), calls={key: 2})


async def test_compensation_retries_with_backoff_until_it_succeeds(order: Order) -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=2.0, multiplier=2.0, jitter=0)
    kit = Kit(steps=("a", "b"), compensation_retry=policy)
    kit.faults.reject("b", "declined").fail("a", times=2, phase=C)
    clock = VirtualClock()
    async with saga_engine(kit.saga, clock=clock) as h:
        saga_id = await h.start(kit.saga, order)
        await clock.wait_for_sleepers(1)
        saga = await h.engine.get(saga_id)
        assert saga.status is SagaStatus.COMPENSATING
        assert saga.step("a", C).status is S.COMPENSATING  # type: ignore[union-attr]
        clock.advance(2.0)
        await clock.wait_for_sleepers(1)
        clock.advance(4.0)
        record = await h.wait(saga_id)
    assert clock.slept == [2.0, 4.0]
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "declined", "the saga keeps the reason it compensated"
    assert record.step("a", C).attempts == 3  # type: ignore[union-attr]
    retrying = [e.attempt for e in record.history if e.type is F.COMPENSATION_RETRYING]
    assert retrying == [1, 2]


async def test_compensation_that_cannot_finish_fails_the_saga_and_retry_completes_it(
    kit: Kit, order: Order
) -> None:
    kit.faults.reject("c", "out of stock").fail("b", times=None, phase=C, exc=OSError("down"))
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        failed = await h.wait(saga_id)
        assert failed.status is SagaStatus.FAILED
        assert failed.error == "compensation of b failed: OSError: down"
        assert failed.owner is None, "FAILED hands the lease back: it waits for an operator"
        b_undo = failed.step("b", C)
        assert b_undo is not None
        assert b_undo.status is S.FAILED
        assert b_undo.attempts == 3
        assert b_undo.error == "OSError: down"
        assert failed.step("a", C) is None, "compensation stops at the step that failed"
        assert failed.history[-1].type is F.SAGA_FAILED
        assert await h.engine.recover() == 0, "recovery does not pick FAILED sagas up"

        kit.faults.clear()  # the operator fixed the participant
        await h.engine.retry(saga_id)
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "out of stock", "the retried saga keeps why it compensated"
    assert kit.trace == ["do:a", "do:b", "undo:b", "undo:a"], "faulted undo calls never got in"
    assert record.step("b", C).status is S.COMPENSATED  # type: ignore[union-attr]
    assert record.step("b", C).attempts == 4  # type: ignore[union-attr]
    assert record.step("a", C).status is S.COMPENSATED  # type: ignore[union-attr]
    types = [e.type for e in record.history]
    assert types.index(F.RETRY_REQUESTED) > types.index(F.SAGA_FAILED)
    assert types[-1] is F.SAGA_COMPENSATED


async def test_retry_is_refused_unless_the_saga_failed(kit: Kit, order: Order) -> None:
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
        with pytest.raises(InvalidTransition, match="only FAILED"):
            await h.engine.retry(record.id)


async def test_a_step_swallowing_its_cancellation_still_times_out_cleanly(order: Order) -> None:
    """A step that hides the timeout's cancellation and returns late still counts as done."""
    kit = Kit(steps=("a",))
    seen: list[str] = []

    @kit.saga.step(timeout=0.01)
    async def stubborn(ctx: object, o: Order) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
        return "late"

    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert seen == ["cancelled"]
    assert record.status is SagaStatus.SUCCEEDED
    assert record.output("stubborn") == "late"


async def test_a_timeout_raised_by_the_step_itself_is_also_treated_as_uncertain(
    kit: Kit, order: Order
) -> None:
    """A participant call that timed out may have landed: the runner treats any TimeoutError
    as an uncertain outcome, retried per policy and compensated once retries are spent."""
    kit.faults.fail("b", times=None, exc=TimeoutError)
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    b = record.step("b")
    assert b is not None
    assert b.uncertain
    assert b.attempts == 3
    assert kit.trace == ["do:a", "undo:b", "undo:a"]


async def test_a_cancel_during_retry_backoff_stops_retrying_and_compensates(
    order: Order,
) -> None:
    kit = Kit(retry=RetryPolicy(max_attempts=5, initial_delay=10.0, jitter=0))
    kit.faults.fail("b", times=None)
    clock = VirtualClock()
    async with saga_engine(kit.saga, clock=clock) as h:
        saga_id = await h.start(kit.saga, order)
        await clock.wait_for_sleepers(1)
        await h.engine.cancel(saga_id)
        clock.advance_to_next()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.step("b").attempts == 1  # type: ignore[union-attr]
    assert kit.trace == ["do:a", "undo:a"]
