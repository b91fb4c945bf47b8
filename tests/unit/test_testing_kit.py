"""sagaway.testing is shipped to users: its clock, faults and ledger must do what they say."""

import asyncio
import importlib
import subprocess
import sys

import pytest
from sagakit import Kit, Order

import sagaway.testing
from sagaway import Phase, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.clock import Clock
from sagaway.testing import (
    EffectLedger,
    Faults,
    Hang,
    VirtualClock,
    fails_when,
    flaky,
    hangs,
    saga_engine,
)


def ctx(step: str = "s", key: str = "id:s:forward", phase: Phase = Phase.FORWARD) -> StepContext:
    return StepContext(
        saga_id="id",
        saga_name="n",
        step=step,
        phase=phase,
        attempt=1,
        idempotency_key=key,
        forward_key=key.replace(":compensation", ":forward"),
        results={},
    )


# -- VirtualClock ----------------------------------------------------------------------------


async def test_virtual_clock_sleep_returns_only_once_time_passes_its_wakeup() -> None:
    clock = VirtualClock(start=100.0)
    as_clock: Clock = clock  # mypy checks it implements the engine's Clock protocol
    assert as_clock.now() == 100.0
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.now())

    tasks = [asyncio.create_task(sleeper(s)) for s in (5.0, 2.0, 2.0)]
    await clock.wait_for_sleepers(3)
    assert clock.wakeups == [102.0, 102.0, 105.0]
    assert clock.advance(1.0) == 0, "nobody is due yet"
    assert clock.sleepers == 3
    assert clock.advance(1.0) == 2
    await asyncio.gather(tasks[1], tasks[2])  # the two woken sleepers finish; the third sleeps
    assert woke == [102.0, 102.0]
    assert not tasks[0].done()
    assert clock.sleepers == 1
    assert clock.advance_to_next() == 3.0
    await asyncio.gather(*tasks)
    assert woke == [102.0, 102.0, 105.0]
    assert clock.slept == [5.0, 2.0, 2.0]
    assert clock.next_wakeup is None
    assert clock.advance_to_next() == 0.0


async def test_virtual_clock_zero_sleep_and_auto_advance_do_not_block() -> None:
    clock = VirtualClock(start=0.0)
    await clock.sleep(0)
    assert clock.now() == 0.0
    auto = VirtualClock(start=0.0, auto_advance=True)
    await auto.sleep(3.0)
    await auto.sleep(4.0)
    assert auto.now() == 7.0
    assert auto.sleepers == 0


async def test_virtual_clock_forgets_cancelled_sleepers_and_refuses_to_go_back() -> None:
    clock = VirtualClock(start=0.0)
    task = asyncio.create_task(clock.sleep(10.0))
    await clock.wait_for_sleepers(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    clock.set_time(50.0)
    assert clock.now() == 50.0


# -- Faults ----------------------------------------------------------------------------------


async def test_faults_fire_per_idempotency_key_in_arming_order() -> None:
    faults = Faults()
    calls: list[str] = []

    @faults
    async def action(c: StepContext, value: int) -> int:
        calls.append(c.idempotency_key)
        return value * 2

    faults.fail("s", times=2, exc=ConnectionError("down"))
    for key in ("k1", "k2"):
        for _ in range(2):
            with pytest.raises(ConnectionError, match="down"):
                await action(ctx(key=key), 1)
        assert await action(ctx(key=key), 21) == 42
    assert faults.calls == {"k1": 3, "k2": 3}
    assert await action(ctx(step="other"), 1) == 2, "faults are per step name"

    faults.clear()
    faults.reject("s", "too big", when=lambda v: v > 10)
    assert await action(ctx(), 1) == 2
    with pytest.raises(StepFailed, match="too big"):
        await action(ctx(), 11)


async def test_faults_by_phase_and_lost_responses() -> None:
    faults = Faults().fail("s", phase=Phase.COMPENSATION, times=None, exc=OSError)
    effects: list[str] = []

    @faults
    async def both(c: StepContext, value: int) -> None:
        effects.append(c.idempotency_key)

    await both(ctx(), 1)
    with pytest.raises(OSError, match="injected fault in s"):
        await both(ctx(key="id:s:compensation", phase=Phase.COMPENSATION), 1)
    assert effects == ["id:s:forward"]

    lossy = Faults().fail("s", after=True)
    wrapped = lossy(both)
    with pytest.raises(ConnectionError):
        await wrapped(ctx(key="k"), 1)
    assert effects[-1] == "k", "the effect happened before the error"


async def test_hang_blocks_until_released_and_reports_entry() -> None:
    faults = Faults()
    hang = faults.hang("s", times=1)

    @faults
    async def action(c: StepContext, value: int) -> int:
        return value

    task = asyncio.create_task(action(ctx(), 7))
    await hang.entered.wait()
    assert not task.done()
    hang.release()
    assert await task == 7
    assert await action(ctx(), 8) == 8, "times=1: the second call does not hang"
    assert hang.count == 1


async def test_decorators_keep_the_step_signature_the_saga_reads_types_from() -> None:
    saga = Saga("decorated")
    gate = Hang()
    gate.release()

    @saga.step(retry=RetryPolicy(max_attempts=3, initial_delay=0))
    @flaky(fail_times=2)
    async def first(c: StepContext, order: Order) -> Order:
        assert isinstance(order, Order)
        return order

    @saga.step
    @fails_when(lambda o: o.amount > 100, "over limit")
    async def second(c: StepContext, order: Order) -> int:
        return order.amount

    @saga.step
    @hangs(gate, times=1)
    async def third(c: StepContext, order: Order) -> int:
        return 3

    assert saga.steps[0].input_adapter is not None
    assert [step.name for step in saga.steps] == ["first", "second", "third"]
    async with saga_engine(saga) as h:
        ok = await h.run(saga, Order(id="a", amount=5))
        big = await h.run(saga, Order(id="b", amount=500))
    assert ok.status is SagaStatus.SUCCEEDED
    assert ok.step("first").attempts == 3  # type: ignore[union-attr]
    assert big.status is SagaStatus.COMPENSATED
    assert big.error == "over limit"


# -- EffectLedger -----------------------------------------------------------------------------


def test_effect_ledger_dedupes_counts_and_tombstones() -> None:
    ledger = EffectLedger()
    assert ledger.apply("s:a:forward", 10) == 10
    assert ledger.apply("s:a:forward", 99) == 10, "a duplicate returns the first result"
    ledger.assert_exactly_once("s:a:forward", calls={"s:a:forward": 2})
    assert ledger.duplicates == {"s:a:forward": 1}
    assert ledger.live == {"s:a:forward": 10}

    undo = StepContext("s", "n", "a", Phase.COMPENSATION, 1, "s:a:compensation", "s:a:forward", {})
    assert ledger.revoke(undo) is True
    assert ledger.revoke(undo) is False, "a compensation is applied once too"
    ledger.assert_not_applied("s:a:forward")

    early = StepContext("s", "n", "b", Phase.COMPENSATION, 1, "s:b:compensation", "s:b:forward", {})
    assert ledger.revoke(early) is False
    assert ledger.apply("s:b:forward", 5) is None, "the late action is refused"
    assert ledger.live == {}
    with pytest.raises(AssertionError, match="s:b:forward"):
        ledger.assert_exactly_once("s:b:forward")


def test_a_non_deduplicating_ledger_shows_double_effects() -> None:
    ledger = EffectLedger(dedupe=False)
    ledger.apply("k", 1)
    ledger.apply("k", 1)
    with pytest.raises(AssertionError, match="'k': 2"):
        ledger.assert_exactly_once("k", calls={"k": 2})


def test_exactly_once_fails_on_a_deduplicated_second_call() -> None:
    # An engine that re-runs a step whose outcome was recorded: dedupe keeps the effect at
    # one, so only the call count can see it.
    ledger = EffectLedger()
    ledger.apply("s:a:forward", 1)
    ledger.apply("s:a:forward", 1)
    with pytest.raises(AssertionError, match=r"calls per key differ .*'s:a:forward': \(2, 1\)"):
        ledger.assert_exactly_once("s:a:forward")
    ledger.assert_exactly_once("s:a:forward", calls={"s:a:forward": 2})


def test_exactly_once_fails_on_a_retry_under_a_new_key() -> None:
    # An engine that made up a new idempotency key for the retry: two effects, each "once".
    ledger = EffectLedger()
    ledger.apply("s:a:forward", 1)
    ledger.apply("s:a:forward:retry-2", 1)
    with pytest.raises(AssertionError, match=r"unexpected keys: \['s:a:forward:retry-2'\]"):
        ledger.assert_exactly_once("s:a:forward")


def test_exactly_once_checks_compensation_calls_and_reports_every_mismatch() -> None:
    ledger = EffectLedger()
    ledger.apply("s:a:forward", 1)
    undo = StepContext("s", "n", "a", Phase.COMPENSATION, 1, "s:a:compensation", "s:a:forward", {})
    ledger.revoke(undo)
    ledger.revoke(undo)
    ledger.assert_exactly_once("s:a:forward", calls={"s:a:compensation": 2})
    with pytest.raises(AssertionError) as failure:
        ledger.assert_exactly_once("s:b:forward", calls={"s:a:compensation": 1})
    message = str(failure.value)
    assert "'s:b:forward': 0" in message
    assert "unexpected keys: ['s:a:forward']" in message
    assert "'s:a:compensation': (2, 1)" in message


# -- harness and packaging --------------------------------------------------------------------


async def test_saga_engine_builds_an_opened_engine_on_memory_with_a_virtual_clock(
    kit: Kit, order: Order
) -> None:
    async with saga_engine(kit.saga) as h:
        assert h.engine.clock is h.clock
        assert h.engine.store is h.store
        assert h.clock.auto_advance
        record = await h.run(kit.saga, order)
        assert record.history, "run returns the full record"
    assert record.status is SagaStatus.SUCCEEDED


async def test_harness_wait_fails_loudly_instead_of_hanging(kit: Kit, order: Order) -> None:
    kit.faults.hang("a")
    async with saga_engine(kit.saga) as h:
        saga_id = await h.start(kit.saga, order)
        with pytest.raises(AssertionError, match="still RUNNING"):
            await h.wait(saga_id, timeout=0.01)


def test_importing_sagaway_testing_never_requires_pytest() -> None:
    code = (
        "import sys; sys.modules['pytest'] = None; import sagaway.testing as t; "
        "assert 'VirtualClock' in t.__all__; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_store_contract_is_exported_lazily() -> None:
    assert "SagaStoreContract" in sagaway.testing.__all__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sagaway.testing.nope  # noqa: B018
    try:
        importlib.import_module("sagaway.testing.contract")
    except ImportError:
        pytest.skip("sagaway.testing.contract is not written yet")
    assert sagaway.testing.SagaStoreContract.__name__ == "SagaStoreContract"
