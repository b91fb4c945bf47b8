"""Step kinds (pivot, retriable), cancellation, deadlines and idempotent starts."""

import pytest
from sagakit import Kit, Order

from sagaway import (
    EventType,
    InvalidTransition,
    Phase,
    RetryPolicy,
    SagaNotFound,
    SagaStatus,
    StepStatus,
)
from sagaway.testing import VirtualClock, saga_engine

S, F = StepStatus, EventType
C = Phase.COMPENSATION
PIVOTED = {"p": "pivot", "r": "retriable", "s": "retriable"}


def pivot_kit(**kwargs: object) -> Kit:
    """a (compensatable) -> p (pivot) -> r, s (retriable)."""
    return Kit(steps=("a", "p", "r", "s"), kinds=PIVOTED, **kwargs)  # type: ignore[arg-type]


async def test_after_the_pivot_retriable_steps_retry_past_their_policy_until_success(
    order: Order,
) -> None:
    kit = pivot_kit(retry=RetryPolicy(max_attempts=1, initial_delay=0))
    kit.faults.fail("r", times=5)
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.step("r").attempts == 6  # type: ignore[union-attr]
    assert not any(phase is C for _, phase in record.steps), "nothing is compensated"


async def test_failure_of_the_pivot_compensates_the_steps_before_it(order: Order) -> None:
    kit = pivot_kit()
    kit.faults.reject("p", "card declined")
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.COMPENSATED
    assert kit.trace == ["do:a", "undo:a"]
    assert record.step("r") is None


async def test_business_failure_after_the_pivot_fails_the_saga_for_an_operator(
    order: Order,
) -> None:
    kit = pivot_kit()
    kit.faults.reject("s", "address rejected by courier", times=1)
    async with saga_engine(kit.saga) as h:
        failed = await h.run(kit.saga, order)
        assert failed.status is SagaStatus.FAILED
        assert failed.error == "s: address rejected by courier"
        assert failed.step("s").status is S.FAILED  # type: ignore[union-attr]
        assert kit.trace == ["do:a", "do:p", "do:r"], "no compensation past the pivot"

        await h.engine.retry(failed.id)  # the fault fired once: the retry goes forward
        record = await h.wait(failed.id)
    assert record.status is SagaStatus.SUCCEEDED
    assert record.error is None
    assert record.step("s").attempts == 2  # type: ignore[union-attr]
    assert kit.trace == ["do:a", "do:p", "do:r", "do:s"]


async def test_cancel_after_the_pivot_is_refused(order: Order) -> None:
    kit = pivot_kit()
    hang = kit.faults.hang("r")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        with pytest.raises(InvalidTransition, match=r"too late to cancel .* step 'p'"):
            await h.engine.cancel(saga_id)
        hang.release()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.SUCCEEDED


async def test_cancel_before_the_pivot_compensates_between_steps(kit: Kit, order: Order) -> None:
    hang = kit.faults.hang("b")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        flagged = await h.engine.cancel(saga_id)
        assert flagged.cancel_requested
        hang.release()  # cancellation takes effect once the running step ends
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "cancelled"
    assert kit.trace == ["do:a", "do:b", "undo:b", "undo:a"]
    assert record.step("c") is None
    assert not record.cancel_requested, "the flag is cleared once compensation starts"
    types = [e.type for e in record.history]
    assert types.count(F.CANCEL_REQUESTED) == 2, "the request, then the stop it caused"


async def test_cancel_of_a_finished_or_unknown_saga_is_refused(kit: Kit, order: Order) -> None:
    async with saga_engine(kit.saga) as h:
        record = await h.run(kit.saga, order)
        with pytest.raises(InvalidTransition):
            await h.engine.cancel(record.id)
        with pytest.raises(SagaNotFound, match="nope"):
            await h.engine.cancel("nope")


async def test_passing_the_saga_deadline_compensates(order: Order) -> None:
    kit = Kit(deadline=60.0)
    hang = kit.faults.hang("b")
    clock = VirtualClock()
    async with saga_engine(kit.saga, clock=clock) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        clock.advance(61.0)
        hang.release()
        record = await h.wait(saga_id)
    assert record.deadline_at == record.created_at + 60.0
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "deadline expired"
    assert kit.trace == ["do:a", "do:b", "undo:b", "undo:a"]
    assert F.DEADLINE_EXPIRED in [e.type for e in record.history]


async def test_start_deadline_overrides_the_sagas_default(order: Order) -> None:
    kit = Kit(deadline=3600.0)
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order, deadline=5.0)
        record = await h.wait(saga_id)
    assert record.deadline_at == record.created_at + 5.0


async def test_backoff_never_sleeps_past_the_deadline(order: Order) -> None:
    slow = RetryPolicy(max_attempts=5, initial_delay=100.0, max_delay=100.0, jitter=0)
    kit = Kit(steps=("a",), retry=slow)
    kit.faults.fail("a", times=None)
    clock = VirtualClock()
    async with saga_engine(kit.saga, clock=clock) as h:
        saga_id = await h.start(kit.saga, order, deadline=10.0)
        await clock.wait_for_sleepers(1)
        assert clock.wakeups == [clock.now() + 10.0], "the 100 s backoff is cut to the deadline"
        clock.advance(10.0)
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.step("a").attempts == 1  # type: ignore[union-attr]


async def test_deadline_no_longer_applies_once_past_the_pivot(order: Order) -> None:
    kit = pivot_kit(deadline=60.0)
    hang = kit.faults.hang("p")
    clock = VirtualClock()
    async with saga_engine(kit.saga, clock=clock) as h:
        saga_id = await h.start(kit.saga, order)
        await hang.entered.wait()
        clock.advance(61.0)
        hang.release()
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.trace == ["do:a", "do:p", "do:r", "do:s"]


async def test_start_with_a_used_idempotency_key_returns_the_same_id_and_starts_nothing(
    kit: Kit, order: Order
) -> None:
    async with saga_engine(kit.saga) as h:
        first = await h.start(kit.saga, order, idempotency_key="order-42")
        await h.wait(first)
        again = await h.start(kit.saga, Order(id="other", amount=1), idempotency_key="order-42")
        other = await h.start(kit.saga, order, idempotency_key="order-43")
        await h.wait(other)
        page = await h.engine.list_sagas()
    assert again == first
    assert other != first
    assert page.total == 2
    assert kit.trace.count("do:a") == 2, "one run per distinct key"
    record = await h.engine.get(first)
    assert record.idempotency_key == "order-42"
    assert record.input == order.model_dump()


async def test_concurrent_starts_with_one_key_create_one_saga(kit: Kit, order: Order) -> None:
    import asyncio

    async with saga_engine(kit.saga) as h:
        ids = await asyncio.gather(
            *(h.start(kit.saga, order, idempotency_key="same") for _ in range(10))
        )
        await h.wait(ids[0])
    assert len(set(ids)) == 1
    assert kit.trace == ["do:a", "do:b", "do:c"]


async def test_cancel_right_after_start_compensates_and_leaves_no_step_running(
    kit: Kit, order: Order
) -> None:
    """Step 0 is written RUNNING with the saga; cancelled before it runs, it must not stay
    RUNNING in a finished saga. It is closed FAILED and uncertain, so it is compensated."""
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        await h.engine.cancel(saga_id)
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert kit.trace == ["undo:a"], "a never ran; its compensation must be (and is) safe"
    a = record.step("a")
    assert a is not None
    assert a.status is S.FAILED
    assert a.uncertain
    assert a.error == "cancelled"
    assert all(row.status is not S.RUNNING for row in record.steps.values())


async def test_deadline_passed_while_a_step_was_uncertain_closes_and_compensates_it(
    order: Order,
) -> None:
    kit = Kit(deadline=5.0)
    clock = VirtualClock()
    async with saga_engine(kit.saga, clock=clock) as h:
        saga_id = await h.start(kit.saga, order)
        clock.advance(10.0)  # before the first step got to run
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "deadline expired"
    assert record.step("a").status is S.FAILED  # type: ignore[union-attr]
    assert kit.trace == ["undo:a"]


async def test_a_pivot_that_stays_uncertain_fails_for_an_operator_instead_of_compensating(
    order: Order,
) -> None:
    # Every attempt of the pivot takes effect and then times out: its outcome is uncertain and
    # it has no compensation. Compensating a (as for any other uncertain step) would leave p's
    # effect applied with everything around it undone; the saga waits for an operator instead.
    kit = pivot_kit()
    kit.faults.fail("p", times=3, exc=TimeoutError, after=True)
    async with saga_engine(kit.saga) as h:
        failed = await h.run(kit.saga, order)
        assert failed.status is SagaStatus.FAILED
        assert failed.error == "p: timed out"
        p = failed.step("p")
        assert p is not None
        assert (p.status, p.uncertain, p.attempts) == (S.FAILED, True, 3)
        assert kit.trace == ["do:a", "do:p", "do:p", "do:p"], "nothing compensated"

        await h.engine.retry(failed.id)  # the operator: ask the pivot again, same key
        record = await h.wait(failed.id)
    assert record.status is SagaStatus.SUCCEEDED
    keys = [kit.key(record.id, step) for step in "aprs"]
    kit.ledger.assert_exactly_once(*keys, calls={keys[1]: 4})
    assert kit.ledger.live.keys() == set(keys)
