"""The memory store keeps a finished saga compact (``_memory_commit.Finished``): every read of it
gives back the record the run finished with, field for field, and writes to it still work."""

from __future__ import annotations

import dataclasses
from enum import IntEnum
from typing import Any

import pytest
from sagakit import Kit, Order

from sagaway.errors import CancelRefused
from sagaway.state import (
    Change,
    Event,
    EventType,
    Phase,
    SagaRecord,
    SagaStatus,
    StepRecord,
    StepStatus,
    apply_change,
)
from sagaway.store._memory_commit import Finished
from sagaway.store.memory import MemoryStore
from sagaway.testing import saga_engine
from sagaway.testing.contract import DEF, new_saga

C = Phase.COMPENSATION
NOW = 1_795_682_717.4182477


def _same(found: SagaRecord, expected: SagaRecord) -> None:
    """Equal in every field a read gives, the fence (not compared by ``==``) and times too."""
    assert found == expected
    assert found.fence == expected.fence
    assert [e.at for e in found.history] == [e.at for e in expected.history]
    assert [(s.started_at, s.finished_at) for s in found.steps.values()] == [
        (s.started_at, s.finished_at) for s in expected.steps.values()
    ]
    assert list(found.steps) == list(expected.steps), "step rows in the order written"
    assert found.definition is None


async def _run(kit: Kit, store: MemoryStore, order: Order) -> tuple[str, SagaRecord]:
    """Run one saga on ``store``; the id and the record its run held at the finishing commit."""
    finished: list[SagaRecord] = []

    def listener(record: SagaRecord, change: Change) -> None:
        if change.status is not None and change.status.is_terminal:
            finished.append(record.copy())

    async with saga_engine(kit.saga, store=store) as h:
        h.engine.subscribe(listener)
        saga_id = await h.start(kit.saga, order)
        await h.wait(saga_id)
    (at_finish,) = finished
    at_finish.definition = None
    return saga_id, at_finish


@pytest.mark.parametrize("end", ["succeeded", "compensated", "failed"])
async def test_a_finished_saga_reads_back_as_the_run_finished_it(
    end: str, kit: Kit, order: Order
) -> None:
    if end != "succeeded":
        kit.faults.reject("c", "out of stock")
    if end == "failed":
        kit.faults.fail("b", times=None, phase=C, exc=OSError("down"))
    store = MemoryStore()
    saga_id, expected = await _run(kit, store, order)
    assert expected.status is SagaStatus(end.upper())
    assert type(store._sagas[saga_id]) is Finished, "kept compact"

    _same(await store.get(saga_id), expected)
    peeked = await store.peek(saga_id)
    assert peeked is not None
    assert peeked.history == []
    expected_listed = expected.copy(history=False)
    _same(peeked, expected_listed)
    expected_listed.steps = {}
    for page in (
        await store.list_sagas(),
        await store.list_sagas(status=expected.status, name=expected.name, limit=1),
    ):
        assert page.total == 1
        _same(page.items[0], expected_listed)
    assert (await store.list_sagas(status=SagaStatus.RUNNING)).total == 0
    assert (await store.list_sagas(name="other")).items == []
    assert await store.counts() == {expected.status: 1}
    assert (await store.list_waiting()).total == 0
    assert await store.claim("e2", now=NOW, lease_seconds=30, definitions=[DEF], limit=9) == []
    assert await store.renew_leases("test-engine", now=NOW, lease_seconds=30) == []
    refused = await store.acquire(
        saga_id, "op", now=NOW, lease_seconds=30, statuses=[SagaStatus.RUNNING]
    )
    assert refused is None
    assert type(store._sagas[saga_id]) is Finished, "a refused acquire writes nothing"
    # A read hands out a record of its own: changing it changes nothing kept.
    read = await store.get(saga_id)
    read.steps.clear()
    read.history.clear()
    _same(await store.get(saga_id), expected)


async def test_writes_to_a_finished_saga_keep_it_and_read_back_after_it(
    kit: Kit, order: Order
) -> None:
    kit.faults.reject("c", "out of stock")
    store = MemoryStore()
    saga_id, expected = await _run(kit, store, order)

    pinned = await store.set_pinned(saga_id, True)
    assert pinned.pinned
    assert pinned.steps == expected.steps
    assert type(store._sagas[saga_id]) is Finished
    assert await store.prunable(finished_before=NOW * 2, limit=10) == []
    assert await store.prune([saga_id], finished_before=NOW * 2) == []

    with pytest.raises(CancelRefused):
        await store.request_cancel(
            saga_id, Event(NOW, EventType.CANCEL_REQUESTED, detail="user"), NOW
        )
    after = await store.get(saga_id)
    assert after.history[:-1] == expected.history
    assert after.history[-1].type is EventType.CANCEL_REFUSED
    assert after.pinned
    assert type(store._sagas[saga_id]) is Finished

    await store.set_pinned(saga_id, False)
    assert await store.prunable(finished_before=NOW * 2, limit=10) == [saga_id]
    assert await store.prune([saga_id], finished_before=NOW * 2) == [saga_id]
    assert await store.load(saga_id) is None
    assert saga_id not in store._sagas


async def test_an_operator_retry_of_a_failed_saga_kept_compact_completes_it(
    kit: Kit, order: Order
) -> None:
    kit.faults.reject("c", "out of stock").fail("b", times=None, phase=C, exc=OSError("down"))
    store = MemoryStore()
    async with saga_engine(kit.saga, store=store) as h:
        saga_id = await h.start(kit.saga, order)
        failed = await h.wait(saga_id)
        assert failed.status is SagaStatus.FAILED
        assert type(store._sagas[saga_id]) is Finished
        kit.faults.clear()
        await h.engine.retry(saga_id)
        record = await h.wait(saga_id)
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "out of stock"
    assert record.step("b", C).status is StepStatus.COMPENSATED  # type: ignore[union-attr]
    assert record.history[: len(failed.history)] == failed.history
    assert record.history[len(failed.history)].type is EventType.RETRY_REQUESTED
    assert type(store._sagas[saga_id]) is Finished, "finished again, compact again"


class Grade(IntEnum):
    GOLD = 1


async def test_a_finished_saga_gives_back_the_very_values_it_was_given() -> None:
    store = MemoryStore()
    saga_input = {"grade": Grade.GOLD, "lines": (1, 2)}
    output = {"grade": Grade.GOLD}
    await store.create(
        new_saga("s", at=NOW, status=SagaStatus.RUNNING, owner="e1", input=saga_input)
    )
    row = StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output)
    await store.commit("s", "e1", Change(steps=[row]), NOW)
    await store.commit("s", "e1", Change(status=SagaStatus.SUCCEEDED), NOW + 1)
    assert type(store._sagas["s"]) is Finished
    read = await store.get("s")
    assert read.input is saga_input
    assert read.raw_output("a") is output
    assert type(read.input["lines"]) is tuple


@pytest.mark.parametrize(
    "status", [SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED]
)
async def test_every_field_of_a_finished_saga_reads_back_to_the_bit(status: SagaStatus) -> None:
    store = MemoryStore()
    new = new_saga(
        "s",
        at=NOW,
        status=SagaStatus.RUNNING,
        key="k-1",
        owner="e1",
        lease_until=NOW + 60,
        input={"id": "o-1", "lines": [1, 2.5, None, True, -0.0], "note": "naïve ✓"},
    )
    new.deadline_at = NOW + 3600.125
    await store.create(new)
    at = [NOW + 0.0063145, NOW + 0.0086470, NOW - 3.25, NOW + 1e-7]
    rows = [
        StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, 0, None, False, at[0], at[1]),
        StepRecord("b", Phase.FORWARD, StepStatus.FAILED, 3, None, "declined: ß", True, at[1]),
        StepRecord("a", C, StepStatus.COMPENSATED, 2, "", None, False, at[2], at[3]),
        StepRecord("c", Phase.FORWARD, StepStatus.SKIPPED, 0, [{"x": [1]}], "", False, None, at[3]),
    ]
    events = [
        Event(at[0], EventType.STEP_STARTED, "a", None, 1, "engine-1"),
        Event(at[1], EventType.STEP_SUCCEEDED, "a", Phase.FORWARD, 1),
        Event(at[2], EventType.COMPENSATION_STARTED, "a", C, 1, "engine-1"),
        Event(at[3], EventType.SIGNAL_RECEIVED, None, None, None, "paid sig-1"),
    ]
    await store.commit("s", "e1", Change(steps=rows[:2], events=events[:2]), at[1])
    await store.request_cancel("s", Event(at[1], EventType.CANCEL_REQUESTED), at[1], until="c")
    expected = await store.get("s")
    last = Change(status=status, error="why", steps=rows[2:], events=events[2:])
    await store.commit("s", "e1", last, at[3])
    assert type(store._sagas["s"]) is Finished
    apply_change(expected, last, at[3])
    expected.fence += 1
    _same(await store.get("s"), expected)
    assert expected.cancel_requested
    assert expected.owner == "e1"


def test_the_packed_form_gives_back_every_value_exactly() -> None:
    """``finish`` packs step rows and events into words and the values it keeps: odd values
    (times not whole ticks, a time before the one before it, huge and negative ints, outputs
    of every JSON kind, texts shared and not, a value that is not an enum member, many events
    over many words) read back equal, with the same types, times to the last bit."""
    from sagaway import state
    from sagaway.store._memory_commit import expand, finish

    # A text where an enum member belongs: only the interpreted classes take one.
    pure = state.__file__.endswith(".py")
    status: Any = "CUSTOM" if pure else StepStatus.RUNNING
    phase: Any = "sideways" if pure else C
    kind: Any = "custom_type" if pure else EventType.SIGNAL_RECEIVED
    t, f = NOW, Phase.FORWARD
    odd = [t + 1e-9, t - 3600.0, 0.1, 1e300, -2.5, t + 2**40]
    rows = [
        StepRecord("a", f, StepStatus.SUCCEEDED, 1, 2**70, None, False, t, odd[0]),
        StepRecord("b", f, StepStatus.FAILED, -5, {"k": [1, 2.5]}, "boom", True, odd[1], None),
        StepRecord("b", C, StepStatus.COMPENSATED, 70_000, True, None, False, None, t),
        StepRecord("c", f, status, 0, "text", "boom", False, odd[2], odd[3]),
        StepRecord("d", C, StepStatus.SKIPPED, 2**40, -(2**33), None, False, odd[4], None),
        StepRecord("e", phase, StepStatus.PENDING, 3, 1.5, None, False, odd[5], t),
    ]
    events: list[tuple[Any, ...]] = [
        (EventType.SAGA_STARTED, None, None, None, None),
        (EventType.STEP_STARTED, "a", f, 1, "engine-1"),
        (EventType.STEP_FAILED, "b", C, -(2**62), "engine-1"),
        (kind, "x", phase, 2**31, "detail"),
        (EventType.CANCEL_REFUSED, None, None, 0, "too late"),
    ]
    history = [
        Event(t + i * 0.001 if i % 7 else t - i * 1e-7, *event)
        for i, event in enumerate(events * 40)
    ]
    record = SagaRecord(
        "s-1", "order", 3, SagaStatus.FAILED, {"order": 1}, t, t + 5, "key", "engine-1",
        t + 30, None, True, "out of stock", {(r.name, r.phase): r for r in rows}, history,
        None, None, True, None, 17,
    )  # fmt: skip
    packed = finish(record, packed=True)
    assert len(packed.packed) > packed.words > 4, "many words"
    listed = finish(record, packed=False)  # the interpreted build's form
    assert listed.words == -1
    for entry in (packed, listed):
        back = expand(entry)
        _same(back, record)
        for found, expected in zip(back.steps.values(), rows, strict=True):
            assert [type(v) for v in _fields(found)] == [type(v) for v in _fields(expected)]
        for found_event, expected_event in zip(back.history, history, strict=True):
            found_types = [type(v) for v in _fields(found_event)]
            assert found_types == [type(v) for v in _fields(expected_event)]
        assert back.steps[("b", f)].output is rows[1].output, "values kept, not copied"
        assert expand(entry, history=False).history == []


def _fields(row: StepRecord | Event) -> list[object]:
    return [getattr(row, field.name) for field in dataclasses.fields(row)]
