"""What a new user following docs/engine.md trips over (issue 10, items 1-4): the engine knows
the sagas declared in the process, says so when it finds sagas it cannot resume, validates the
input at start, hands back typed outputs and explains how to open it."""

import logging
from typing import Any

import pytest
from pydantic import BaseModel
from sagakit import Kit, Order

from sagaway import (
    DecodeError,
    Engine,
    EngineNotOpen,
    InvalidInput,
    RetryPolicy,
    Saga,
    SagaStatus,
    StepContext,
)
from sagaway.state import NewSaga
from sagaway.store.memory import MemoryStore
from sagaway.testing import VirtualClock

T0 = 1_700_000_000.0


class Amount(BaseModel):
    cents: int


class Reservation(BaseModel):
    reservation_id: str


async def _stranded(store: MemoryStore, name: str, version: int = 1) -> str:
    """An unfinished saga left by an engine that died (its lease long expired)."""
    saga_id, _ = await store.create(
        NewSaga(
            id=f"left-by-a-crash-{name}",
            name=name,
            version=version,
            input={"id": "o-1", "amount": 5},
            at=T0 - 60,
            status=SagaStatus.RUNNING,
            owner="dead-worker",
            lease_expires_at=T0 - 30,
        )
    )
    return saga_id


# -- 1. the engine knows the sagas declared in the process ---------------------------------------


async def test_an_engine_without_a_sagas_list_resumes_sagas_declared_in_the_process() -> None:
    kit = Kit(name="declared-only")  # declared, never passed to the engine
    store = MemoryStore()
    saga_id = await _stranded(store, "declared-only")
    async with Engine(store, clock=VirtualClock(T0, auto_advance=True)) as engine:
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.trace == ["do:a", "do:b", "do:c"]


async def test_a_sagas_list_narrows_what_the_engine_resumes() -> None:
    Kit(name="served-elsewhere")
    mine = Kit(name="served-here")
    store = MemoryStore()
    other_id = await _stranded(store, "served-elsewhere")
    clock = VirtualClock(T0, auto_advance=True)
    async with Engine(store, sagas=[mine.saga], clock=clock) as engine:
        assert set(engine.known_sagas()) == {("served-here", 1)}
        assert await engine.recover() == 0
    assert (await store.get(other_id)).status is SagaStatus.RUNNING


async def test_unfinished_sagas_of_an_unknown_definition_are_named_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    saga_id = await _stranded(store, "never-declared", version=3)
    clock = VirtualClock(T0, auto_advance=True)
    with caplog.at_level(logging.WARNING, logger="sagaway.engine"):
        async with Engine(store, clock=clock, recovery_interval=3600) as engine:
            for _ in range(3):  # further passes neither spin on it nor repeat the warning
                assert await engine.recover() == 0
    warnings = [r.getMessage() for r in caplog.records if "never-declared" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'never-declared' version 3" in warnings[0]
    assert "Saga('never-declared', version=3)" in warnings[0]
    record = await store.get(saga_id)
    assert (record.status, record.owner) == (SagaStatus.RUNNING, "dead-worker")


# -- 2. input validated at start; undecodable step values are not retried ------------------------


async def test_start_refuses_input_of_the_wrong_type_before_recording_anything() -> None:
    saga = Saga("typed-input")

    @saga.step
    async def charge(ctx: StepContext, amount: Amount) -> int:
        return amount.cents

    store = MemoryStore()
    async with Engine(store, sagas=[saga]) as engine:
        with pytest.raises(InvalidInput) as caught:
            await engine.start(saga, "twelve")
        assert isinstance(caught.value, ValueError)
        message = str(caught.value)
        assert "\n" not in message
        for part in ("typed-input", "Amount", "str"):
            assert part in message
        with pytest.raises(InvalidInput):
            await engine.start(saga, {"cents": "many"})
        assert (await store.list_sagas()).total == 0


async def test_a_step_output_that_does_not_fit_its_type_fails_at_once_and_compensates() -> None:
    saga = Saga("bad-output")
    calls: list[str] = []

    @saga.step
    async def reserve(ctx: StepContext, order: Order) -> Reservation:
        calls.append("reserve")
        return Reservation(reservation_id="r-1")

    @reserve.compensation
    async def release(ctx: StepContext, order: Order, reservation: Reservation | None) -> None:
        calls.append(f"release {reservation}")

    @saga.step
    async def pay(ctx: StepContext, order: Order) -> Reservation:
        calls.append("pay")
        wrong: Any = "not a reservation"
        return wrong  # a programming error, not a transient one

    async with Engine(MemoryStore(), sagas=[saga]) as engine:
        saga_id = await engine.start(saga, Order(id="o-1", amount=5))
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert calls.count("pay") == 1, "not retried"
    assert calls[-1] == "release reservation_id='r-1'"
    row = record.step("pay")
    assert row is not None
    assert row.attempts == 1
    assert row.error is not None
    assert "\n" not in row.error
    assert "'pay' returned a str, not a Reservation" in row.error
    assert record.error == row.error


async def test_a_step_whose_input_cannot_be_decoded_is_not_retried() -> None:
    saga = Saga("mismatched-inputs")
    calls: list[str] = []

    @saga.step
    async def first(ctx: StepContext, data: dict[str, Any]) -> None:
        calls.append("first")

    @first.compensation
    async def undo_first(ctx: StepContext, data: dict[str, Any], output: None) -> None:
        calls.append("undo first")

    @saga.step
    async def second(ctx: StepContext, amount: Amount) -> None:  # takes another shape
        calls.append("second")

    async with Engine(MemoryStore(), sagas=[saga]) as engine:
        saga_id = await engine.start(saga, {"x": 1})
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.COMPENSATED
    assert calls == ["first", "undo first"]
    row = record.step("second")
    assert row is not None
    assert row.attempts == 1
    assert row.error is not None
    assert "\n" not in row.error
    assert "Amount" in row.error
    assert "cents" in row.error
    assert issubclass(DecodeError, TypeError)


# -- 3. typed outputs ------------------------------------------------------------------------------


async def test_outcome_output_is_the_steps_typed_value() -> None:
    saga = Saga("typed-output")

    @saga.step
    async def reserve(ctx: StepContext, order: Order) -> Reservation:
        return Reservation(reservation_id=f"r-{order.id}")

    async with Engine(MemoryStore(), sagas=[saga]) as engine:
        saga_id = await engine.start(saga, Order(id="o-9", amount=5))
        outcome = await engine.wait(saga_id, timeout=5)
        again = await engine.get(saga_id)
    assert outcome.output("reserve") == Reservation(reservation_id="r-o-9")
    assert isinstance(again.output("reserve"), Reservation)
    assert outcome.raw_output("reserve") == {"reservation_id": "r-o-9"}


# -- 4. not open ---------------------------------------------------------------------------------


async def test_start_before_open_says_how_to_open_the_engine() -> None:
    kit = Kit(name="not-opened")
    engine = Engine("sqlite:///never-created.db")
    with pytest.raises(EngineNotOpen, match=r"async with Engine\(\.\.\.\).*await engine\.open\(\)"):
        await engine.start(kit.saga, Order(id="o-1", amount=5))


async def test_a_validation_error_raised_by_a_step_is_recorded_on_one_line() -> None:
    saga = Saga("user-validation")

    @saga.step(retry=RetryPolicy(max_attempts=2, initial_delay=0, jitter=0))
    async def parse(ctx: StepContext, order: Order) -> int:
        return Amount.model_validate({"cents": "lots", "extra": {"nested": "x"}}).cents

    async with Engine(MemoryStore(), sagas=[saga]) as engine:
        saga_id = await engine.start(saga, Order(id="o-1", amount=5))
        record = await engine.wait(saga_id, timeout=5)
    row = record.step("parse")
    assert row is not None
    assert row.attempts == 2, "still the retry policy's call: the step's own code raised it"
    assert row.error == (
        "ValidationError: Amount: cents: Input should be a valid integer, unable to parse "
        "string as an integer"
    )
