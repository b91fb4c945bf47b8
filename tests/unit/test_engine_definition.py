"""Malformed sagas fail when declared; unknown definitions fail with an error naming them."""

import warnings
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError
from sagakit import Kit, Order

from sagaway import (
    DefinitionError,
    Engine,
    RetryPolicy,
    Saga,
    SagaStatus,
    StepContext,
    UnknownSagaError,
)
from sagaway.definition import Step, StepKind
from sagaway.state import NewSaga, Phase
from sagaway.store.memory import MemoryStore
from sagaway.testing import VirtualClock, saga_engine


async def act(ctx: StepContext, data: Any) -> None:
    return None


async def undo(ctx: StepContext, data: Any, output: Any) -> None:
    return None


def test_duplicate_step_names_are_rejected() -> None:
    saga = Saga("s")
    saga.step(name="x")(act)
    with pytest.raises(DefinitionError, match="already has a step named 'x'"):
        saga.step(name="x")(act)


def test_a_retriable_step_cannot_have_a_compensation() -> None:
    saga = Saga("s")
    saga.step(name="p", kind="pivot")(act)
    step = saga.step(name="r", kind="retriable")(act)
    with pytest.raises(DefinitionError, match="never compensated"):
        step.compensation(undo)


def test_a_pivot_cannot_have_a_compensation() -> None:
    step = Saga("s").step(name="p", kind="pivot")(act)
    with pytest.raises(DefinitionError, match="never compensated"):
        step.compensation(undo)


def test_a_second_pivot_is_rejected() -> None:
    saga = Saga("s")
    saga.step(name="p1", kind="pivot")(act)
    with pytest.raises(DefinitionError, match="second pivot"):
        saga.step(name="p2", kind="pivot")(act)


def test_a_compensatable_step_after_the_pivot_is_rejected() -> None:
    saga = Saga("s")
    saga.step(name="p", kind="pivot")(act)
    with pytest.raises(DefinitionError, match="after the pivot"):
        saga.step(name="late")(act)


def test_a_step_must_be_async() -> None:
    def sync(ctx: StepContext, data: Any) -> None:
        return None

    with pytest.raises(DefinitionError, match="must be an async function"):
        Saga("s").step(sync)


@pytest.mark.parametrize("arity", [1, 3])
def test_a_step_must_take_ctx_and_input(arity: int) -> None:
    async def one(ctx: StepContext) -> None:
        return None

    async def three(ctx: StepContext, data: Any, extra: Any) -> None:
        return None

    with pytest.raises(DefinitionError, match=f"must take \\(ctx, input\\); it takes {arity}"):
        Saga("s").step(one if arity == 1 else three)


def test_a_compensation_must_be_async_and_take_ctx_input_output_once() -> None:
    step = Saga("s").step(act)

    def sync_undo(ctx: StepContext, data: Any, output: Any) -> None:
        return None

    async def short_undo(ctx: StepContext, data: Any) -> None:
        return None

    with pytest.raises(DefinitionError, match="async"):
        step.compensation(sync_undo)
    with pytest.raises(DefinitionError, match=r"\(ctx, input, output\)"):
        step.compensation(short_undo)
    step.compensation(undo)
    with pytest.raises(DefinitionError, match="already has a compensation"):
        step.compensation(undo)


def test_unresolvable_type_hints_name_the_function() -> None:
    async def broken(ctx: StepContext, data: "NoSuchType") -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    with pytest.raises(DefinitionError, match="broken"):
        Saga("s").step(broken)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_delay": -1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_bad_retry_policies_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        RetryPolicy(**kwargs)


def test_bad_timeouts_names_and_deadlines_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="timeout"):
        Saga("s").step(timeout=0)(act)
    with pytest.raises(DefinitionError, match="name"):
        Saga("")
    with pytest.raises(DefinitionError, match="deadline"):
        Saga("s", deadline=0)


async def test_a_saga_without_steps_cannot_be_registered_or_started() -> None:
    empty = Saga("empty")
    with pytest.raises(DefinitionError, match="no steps"):
        Engine(sagas=[empty])
    kit = Kit()
    async with saga_engine(kit.saga) as h:
        with pytest.raises(DefinitionError, match="no steps"):
            await h.start(empty, {})


def test_two_definitions_with_one_name_and_version_are_rejected() -> None:
    engine = Engine(sagas=[Kit().saga])
    with pytest.raises(DefinitionError, match="another definition of saga 'order' version 1"):
        engine.register(Kit().saga)
    engine.register(Kit(version=2).saga)  # a new version is a different definition


async def _orphan(store: MemoryStore, name: str, version: int) -> str:
    """A saga of (name, version) left RUNNING by an engine that died long ago."""
    saga_id, _ = await store.create(
        NewSaga(
            id=f"orphan-{name}-{version}",
            name=name,
            version=version,
            input={"id": "o", "amount": 1},
            at=0.0,
            status=SagaStatus.RUNNING,
            owner="dead",
            lease_expires_at=1.0,
        )
    )
    return saga_id


async def test_resuming_an_unknown_definition_names_it_and_leaves_the_lease_free(
    order: Order,
) -> None:
    store = MemoryStore()
    saga_id = await _orphan(store, "order", 7)
    async with saga_engine(Kit().saga, store=store) as h:
        with pytest.raises(UnknownSagaError, match="'order' version 7") as info:
            await h.engine.resume(saga_id)
        assert (info.value.name, info.value.version) == ("order", 7)
        # An admin cancel works without the definition: it only flags the saga for whichever
        # engine can run it, and never takes the lease itself.
        flagged = await h.engine.cancel(saga_id)
        assert flagged.cancel_requested
    record = await store.get(saga_id)
    assert record.owner == "dead", "an engine that cannot run it must not take its lease"


async def test_recovery_leaves_unknown_definitions_for_an_engine_that_knows_them() -> None:
    store = MemoryStore()
    unknown = await _orphan(store, "elsewhere", 1)
    known = await _orphan(store, "order", 1)
    kit = Kit()
    engine = Engine(store, sagas=[kit.saga], clock=VirtualClock(), owner_id="e1")
    taken = await engine.recover()
    assert taken == 1
    record = await engine.wait(known, timeout=5)
    await engine.close()
    assert record.status is SagaStatus.SUCCEEDED
    assert (await store.get(unknown)).owner == "dead"
    with pytest.raises(UnknownSagaError, match="'elsewhere' version 1"):
        engine.definition("elsewhere", 1)


def test_a_step_keeps_its_declared_attributes_and_is_generic() -> None:
    # Step is a plain class (mypyc compiles no generic dataclass): the same attributes, the
    # same keyword construction, and Step[...] in annotations.
    saga = Saga("plain-step")

    @saga.step(timeout=2.0, retry=RetryPolicy(max_attempts=2))
    async def reserve(ctx: StepContext, order: int) -> str:
        return "ok"

    reserve.compensation(undo)
    typed: Step[Any] = reserve
    assert Step[Any] is not None
    assert (typed.name, typed.index, typed.kind, typed.timeout) == (
        "reserve",
        0,
        StepKind.COMPENSATABLE,
        2.0,
    )
    assert (typed.retry.max_attempts, typed.undo, typed.remote, typed.wait) == (2, undo, None, None)
    assert typed.plain_output is str
    assert typed.has_undo
    assert typed.key("s1", Phase.FORWARD) == "s1:reserve:forward"
    again = Step(saga=saga, name="again", action=reserve.action, index=1)
    assert (again.kind, again.undo, again.input_adapter is not None) == (
        StepKind.COMPENSATABLE,
        None,
        True,
    )


class _Line(BaseModel):
    sku: str
    quantity: int


class _Receipt(BaseModel):
    order: str
    lines: list[_Line]
    total: float


class _Always(BaseModel):
    model_config = ConfigDict(revalidate_instances="always")
    total: int


def _reference_encoding(step: Step[Any], value: Any) -> Any:
    """``encode_output`` as it was for every value: the serializer with warnings as errors,
    then the validated value serialized (what a model's exact instance now skips)."""
    adapter = step.output_adapter
    assert adapter is not None
    try:
        return adapter.serializer.to_python(value, mode="json", warnings="error")
    except PydanticSerializationError:
        return adapter.serializer.to_python(adapter.validator.validate_python(value), mode="json")


def test_a_model_result_encodes_as_it_did_with_warnings_as_errors() -> None:
    saga = Saga("encoding")

    @saga.step
    async def receipt(ctx: StepContext, order: str) -> _Receipt:
        raise AssertionError("not run")

    @saga.step
    async def always(ctx: StepContext, order: str) -> _Always:
        raise AssertionError("not run")

    step, revalidated = saga.steps
    assert step.model_output is _Receipt
    assert revalidated.model_output is None
    exact = _Receipt(order="o-1", lines=[_Line(sku="a", quantity=2)], total=1)
    as_dict = {"order": "o-1", "lines": [{"sku": "a", "quantity": 2}], "total": 1}
    # A field holding what its annotation does not say (built without validation): the
    # serializer warns and stores it as it is, before as now.
    unchecked = _Receipt.model_construct(order="o-1", lines=[], total="1.5")
    for value in (exact, as_dict, unchecked):
        with warnings.catch_warnings(record=True) as before:
            warnings.simplefilter("always")
            expected = _reference_encoding(step, value)
        with warnings.catch_warnings(record=True) as now:
            warnings.simplefilter("always")
            assert step.encode_output(value) == expected
        assert [str(w.message) for w in now] == [str(w.message) for w in before]
    assert step.encode_output(exact) == {
        "order": "o-1",
        "lines": [{"sku": "a", "quantity": 2}],
        "total": 1.0,
    }
    # revalidate_instances="always": validation may change an instance, so the old way.
    odd = _Always.model_construct(total="7")
    assert revalidated.encode_output(odd) == _reference_encoding(revalidated, odd) == {"total": 7}
