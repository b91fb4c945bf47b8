"""Values the saga log cannot store (issue 8, item 1).

A step result that is not JSON (``object()``, ``bytes``, a ``Decimal``), a float JSON cannot
spell (NaN, infinities), or a string PostgreSQL refuses (a NUL character, a lone surrogate) must
fail that step once, with an error naming the step and the type, and the saga compensates. The
step must never run again: before the fix the commit failed, the engine resumed the saga from the
log, found the step RUNNING and ran it again, forever. The same values as a saga's input are
refused by ``Engine.start`` (``UnstorableValue``, a ``ValueError``) and nothing is recorded.
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sagaway import DefinitionError, Engine, Saga, SagaStatus, StepContext, StepFailed, StepStatus
from sagaway.errors import UnstorableValue
from sagaway.store.base import SagaStore
from sagaway.store.memory import MemoryStore
from sagaway.store.sqlite import SQLiteStore
from sagaway.testing import saga_engine

UNSTORABLE: list[tuple[str, Any, str]] = [
    ("object", object(), "object"),
    ("bytes", b"\x00\x01", "bytes"),
    ("decimal", Decimal("1.10"), "Decimal"),
    ("nan", math.nan, "float"),
    ("inf", math.inf, "float"),
    ("nul", "a\u0000b", "str"),
    ("nested-nul", {"address": ["x\u0000"]}, "str"),
    ("surrogate", "\ud800", "str"),
    ("nested-object", {"ok": 1, "bad": [object()]}, "object"),
    ("nested-nan", [1.0, -math.inf], "float"),
    ("huge-int", 10**5000, "int"),
    ("nested-huge-int", {"total": [-(10**5000)]}, "int"),
]


def _saga(bad: Any, calls: dict[str, int]) -> Saga:
    saga = Saga("unstorable")

    @saga.step
    async def reserve(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        calls["reserve"] = calls.get("reserve", 0) + 1
        return {"reserved": 1}

    @reserve.compensation
    async def release(ctx: StepContext, data, output):  # type: ignore[no-untyped-def]
        calls["release"] = calls.get("release", 0) + 1

    @saga.step
    async def charge(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        calls["charge"] = calls.get("charge", 0) + 1
        return bad  # no return annotation: the engine stores what it gets

    @charge.compensation
    async def refund(ctx: StepContext, data, output):  # type: ignore[no-untyped-def]
        calls["refund"] = calls.get("refund", 0) + 1
        calls["refund_output_is_none"] = int(output is None)

    @saga.step
    async def ship(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        calls["ship"] = calls.get("ship", 0) + 1

    return saga


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield MemoryStore()
        return
    async with SQLiteStore(f"sqlite:///{tmp_path / 'log.db'}") as sqlite:
        yield sqlite


@pytest.mark.parametrize(("case", "bad", "type_name"), UNSTORABLE, ids=[c[0] for c in UNSTORABLE])
async def test_an_unstorable_step_result_fails_that_step_once_and_compensates(
    store: SagaStore, case: str, bad: Any, type_name: str
) -> None:
    calls: dict[str, int] = {}
    saga = _saga(bad, calls)
    async with saga_engine(saga, store=store) as h:  # type: ignore[arg-type]
        record = await h.run(saga, {"order": case})
        await h.engine.recover(include_own=True)  # nothing left to resume, nothing re-runs
        record = await h.wait(record.id)
    assert record.status is SagaStatus.COMPENSATED, record.error
    # The action ran once and its effect happened: it is compensated (with no output), and so
    # is the step before it; the step after it never runs.
    assert calls == {
        "reserve": 1,
        "charge": 1,
        "refund": 1,
        "refund_output_is_none": 1,
        "release": 1,
    }
    charge = record.step("charge")
    assert charge is not None
    assert charge.status is StepStatus.FAILED
    assert charge.attempts == 1
    assert charge.uncertain
    assert charge.error is not None
    assert "'charge'" in charge.error, charge.error
    assert type_name in charge.error, charge.error
    assert "cannot store" in charge.error
    assert record.error == charge.error


async def test_an_unstorable_result_is_never_retried_even_with_retries_left() -> None:
    calls: dict[str, int] = {}
    saga = _saga(object(), calls)
    saga.get_step("charge").retry = saga.get_step("charge").retry.__class__(max_attempts=5)
    async with saga_engine(saga) as h:
        record = await h.run(saga, {"order": "x"})
    assert record.status is SagaStatus.COMPENSATED
    assert calls["charge"] == 1


@pytest.mark.parametrize(("case", "bad", "type_name"), UNSTORABLE, ids=[c[0] for c in UNSTORABLE])
async def test_an_unstorable_input_is_refused_at_start_and_nothing_is_recorded(
    store: SagaStore, case: str, bad: Any, type_name: str
) -> None:
    calls: dict[str, int] = {}
    saga = _saga(None, calls)
    async with saga_engine(saga, store=store) as h:  # type: ignore[arg-type]
        with pytest.raises(UnstorableValue) as refused:
            await h.start(saga, {"input": bad})
        assert isinstance(refused.value, ValueError)
        assert "input" in str(refused.value)
        assert type_name in str(refused.value)
        assert (await store.list_sagas()).total == 0
    assert calls == {}


async def test_an_unstorable_idempotency_key_is_refused_at_start() -> None:
    saga = _saga(None, {})
    async with saga_engine(saga) as h:
        with pytest.raises(UnstorableValue, match="idempotency key"):
            await h.start(saga, {}, idempotency_key="k\u0000")
        assert (await h.store.list_sagas()).total == 0


async def test_error_texts_with_nul_or_surrogates_are_stored_printable(store: SagaStore) -> None:
    # An exception's text is whatever a library put there: it must never make the transition
    # that records it unstorable (that, too, would re-run the step).
    saga = Saga("bad-texts")
    calls: dict[str, int] = {}

    @saga.step
    async def reserve(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        calls["reserve"] = calls.get("reserve", 0) + 1

    @reserve.compensation
    async def release(ctx: StepContext, data, output):  # type: ignore[no-untyped-def]
        calls["release"] = calls.get("release", 0) + 1

    @saga.step
    async def charge(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        calls["charge"] = calls.get("charge", 0) + 1
        raise StepFailed("card \u0000 declined \ud800")

    async with saga_engine(saga, store=store) as h:  # type: ignore[arg-type]
        record = await h.run(saga, {})
    assert record.status is SagaStatus.COMPENSATED
    assert calls == {"reserve": 1, "charge": 1, "release": 1}
    assert record.error == "card \\0 declined \\ud800"


def test_names_and_owner_ids_that_cannot_be_stored_are_refused_when_declared() -> None:
    with pytest.raises(DefinitionError, match="NUL"):
        Saga("a\u0000b")
    saga = Saga("names")
    with pytest.raises(DefinitionError, match="NUL"):

        @saga.step(name="x\u0000")
        async def step(ctx: StepContext, data):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(UnstorableValue, match="owner_id"):
        Engine(owner_id="worker\u0000")


def test_what_plainly_storable_accepts_check_value_accepts() -> None:
    """``plainly_storable`` skips the encoding ``check_value`` would do: it must never accept a
    value that ``check_value`` refuses (it may leave any value to ``check_value``)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sagaway.store._codec import check_value, plainly_storable

    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=10**4299, max_value=10**4301)
        | st.floats()
        | st.text()
        | st.binary()
        | st.decimals(allow_nan=False)
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner)
            | st.tuples(inner, inner)
            | st.dictionaries(st.text() | st.integers(), inner)
        ),
        max_leaves=20,
    )

    @settings(max_examples=400, deadline=None)
    @given(values)
    def check(value: Any) -> None:
        if plainly_storable(value):
            check_value(value, "a value")  # raises if it should not have been accepted

    check()
    for name, value, _ in UNSTORABLE:
        assert not plainly_storable(value), name
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    assert not plainly_storable(deep)  # left to check_value
    circular: list[Any] = []
    circular.append(circular)
    assert not plainly_storable(circular)
    assert plainly_storable({"order_id": 1, "amount_cents": 5000, "note": "ok", "x": [1.5, None]})
