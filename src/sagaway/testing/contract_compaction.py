"""The contract around compaction: a finished saga reads back exactly as it was written.

Stores may fold a finished saga's step rows and history into a compact form (SQLite does, in
the commit that finishes it; see ``docs/stores.md``). Nothing of that may show through the
port: these tests write sagas through ``create``/``commit``, finish them, and check that every
read (``load`` with and without history, ``list_sagas``, ``counts``, ``claim``, ``acquire``)
gives back what was written, times to the last bit; that writes after the finish (an
operator's retry of a FAILED saga, a refused cancel) come after the packed history; and that
pins and retention treat a compacted saga like any other. They hold for a store that never
compacts too, so every backend runs them.

A backend's test module adds ``CompactionContract`` to its test class, with the same ``store``
fixture as ``SagaStoreContract`` (the retention tests need ``PruningStore``).
"""

from __future__ import annotations

import pytest

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
)
from sagaway.store.base import PruningStore, SagaStore
from sagaway.testing.contract import DEF, new_saga

__all__ = ["CompactionContract"]

# Times as an engine's clock gives them (POSIX seconds with a fraction no decimal writes
# short), one before the saga's creation (a clock stepped back), one far in the future.
NOW = 1_795_682_717.4182477
TIMES = [NOW + 0.0063145, NOW + 0.0086470, NOW - 3.25, NOW + 1e-7, NOW + 86_400 * 365.25]
_END = {
    SagaStatus.SUCCEEDED: EventType.SAGA_SUCCEEDED,
    SagaStatus.COMPENSATED: EventType.SAGA_COMPENSATED,
    SagaStatus.FAILED: EventType.SAGA_FAILED,
}


def _steps(at: list[float]) -> list[StepRecord]:
    """Step rows with every kind of value a row holds (falsy outputs included)."""
    return [
        StepRecord("reserve", Phase.FORWARD, StepStatus.SUCCEEDED, 1, 0, None, False, at[0], at[1]),
        StepRecord(
            "pay",
            Phase.FORWARD,
            StepStatus.FAILED,
            3,
            None,
            "card declined: ß ✓",
            True,
            at[1],
            None,
        ),
        StepRecord("reserve", Phase.COMPENSATION, StepStatus.COMPENSATED, 2, "", None, False),
        StepRecord(
            "ship ✈",
            Phase.FORWARD,
            StepStatus.SUCCEEDED,
            1,
            {"id": "s-1", "lines": [1, 2.5, None, True], "note": "naïve"},
            None,
            False,
            at[2],
            at[3],
        ),
        StepRecord("notify", Phase.FORWARD, StepStatus.SKIPPED, 0, [], "", False, None, at[4]),
    ]


def _events(at: list[float]) -> list[Event]:
    return [
        Event(at[0], EventType.SAGA_STARTED),
        Event(at[0], EventType.STEP_STARTED, "reserve", None, 1, "engine-1"),
        Event(at[1], EventType.STEP_SUCCEEDED, "reserve", Phase.FORWARD, 1),
        Event(at[1], EventType.STEP_RETRYING, "pay", None, 2, "timeout after 5 s"),
        Event(at[2], EventType.STEP_FAILED, "pay", None, 3, ""),
        Event(at[3], EventType.COMPENSATION_STARTED, "reserve", Phase.COMPENSATION, 1, "engine-1"),
        Event(at[3], EventType.SIGNAL_RECEIVED, None, None, None, "paid sig-1"),
        Event(at[4], EventType.STEP_COMPENSATED, "reserve", Phase.COMPENSATION, 2),
    ]


async def _finished(store: SagaStore, saga_id: str, status: SagaStatus) -> SagaRecord:
    """A saga created at NOW, written in three commits, finished in ``status``; returns what
    ``load`` gave just before the finishing commit, with that commit's rows added."""
    await store.create(
        new_saga(saga_id, at=NOW, status=SagaStatus.RUNNING, owner="e1", lease_until=NOW + 60)
    )
    steps, events = _steps(TIMES), _events(TIMES)
    await store.commit(saga_id, "e1", Change(steps=steps[:2], events=events[:3]), TIMES[1])
    await store.commit(saga_id, "e1", Change(steps=steps[2:4], events=events[3:6]), TIMES[2])
    before = await store.get(saga_id)
    last = Change(
        status=status,
        error=None if status is SagaStatus.SUCCEEDED else "pay failed",
        steps=steps[4:],
        events=[*events[6:], Event(TIMES[4], _END[status])],
        release_lease=True,
    )
    await store.commit(saga_id, "e1", last, TIMES[4])
    for step in last.steps:
        before.steps[(step.name, step.phase)] = step
    before.history += last.events
    before.status, before.error, before.updated_at = status, last.error, TIMES[4]
    before.owner = before.lease_expires_at = None
    return before


def _same(found: SagaRecord, expected: SagaRecord) -> None:
    assert found.steps == expected.steps
    assert found.history == expected.history
    assert [e.at for e in found.history] == [e.at for e in expected.history]  # to the bit
    assert (found.status, found.error, found.updated_at, found.input) == (
        expected.status,
        expected.error,
        expected.updated_at,
        expected.input,
    )


class CompactionContract:
    """What compaction may not change: every read of a finished saga, and what comes after."""

    @pytest.mark.parametrize(
        "status", [SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED]
    )
    async def test_a_finished_saga_reads_back_as_written(
        self, store: SagaStore, status: SagaStatus
    ) -> None:
        expected = await _finished(store, "done", status)
        _same(await store.get("done"), expected)
        without = await store.get("done", history=False)
        assert (without.steps, without.history) == (expected.steps, [])
        page = await store.list_sagas(status=status)
        assert [r.id for r in page.items] == ["done"]
        assert page.total == 1
        assert await store.counts() == {status: 1}

    async def test_a_running_saga_is_left_as_it_is(self, store: SagaStore) -> None:
        await _finished(store, "done", SagaStatus.SUCCEEDED)
        await store.create(new_saga("run", at=NOW, status=SagaStatus.RUNNING, owner="e1"))
        steps, events = _steps(TIMES), _events(TIMES)
        await store.commit("run", "e1", Change(steps=steps, events=events), TIMES[1])
        running = await store.get("run")
        assert running.steps == {(s.name, s.phase): s for s in steps}
        assert running.history[1:] == events
        await store.commit("run", "e1", Change(release_lease=True), TIMES[2])
        (claimed,) = await store.claim(
            "e2", now=NOW + 120, lease_seconds=30, definitions=[DEF], limit=10
        )
        assert claimed.id == "run"
        assert claimed.steps == running.steps

    async def test_an_operator_retry_after_the_finish_reads_after_the_packed_history(
        self, store: SagaStore
    ) -> None:
        expected = await _finished(store, "failed", SagaStatus.FAILED)
        retry = Event(NOW + 100, EventType.RETRY_REQUESTED, detail="operator")
        taken = await store.acquire(
            "failed",
            "op",
            now=NOW + 100,
            lease_seconds=30,
            statuses=[SagaStatus.FAILED],
            event=retry,
        )
        assert taken is not None
        assert taken.steps == expected.steps
        redone = StepRecord(
            "pay", Phase.FORWARD, StepStatus.SUCCEEDED, 4, {"paid": 1}, None, False, NOW + 101
        )
        end = Event(NOW + 102, EventType.SAGA_SUCCEEDED)
        change = Change(
            status=SagaStatus.RUNNING,
            steps=[redone],
            events=[Event(NOW + 101, EventType.STEP_SUCCEEDED, "pay", None, 4)],
        )
        await store.commit("failed", "op", change, NOW + 101)
        middle = await store.get("failed")
        assert middle.history == [*expected.history, retry, *change.events]
        assert middle.step("pay") == redone
        assert middle.step("reserve") == expected.step("reserve")
        finish = Change(status=SagaStatus.SUCCEEDED, events=[end], release_lease=True)
        await store.commit("failed", "op", finish, NOW + 102)
        done = await store.get("failed")
        assert done.history == [*expected.history, retry, *change.events, end]
        assert done.steps == {**expected.steps, ("pay", Phase.FORWARD): redone}

    async def test_a_refused_cancel_of_a_finished_saga_is_recorded_last(
        self, store: SagaStore
    ) -> None:
        expected = await _finished(store, "done", SagaStatus.COMPENSATED)
        with pytest.raises(CancelRefused):
            await store.request_cancel(
                "done", Event(NOW + 5, EventType.CANCEL_REQUESTED, detail="user"), NOW + 5
            )
        history = (await store.get("done")).history
        assert history[:-1] == expected.history
        assert history[-1].type is EventType.CANCEL_REFUSED

    async def test_pins_and_retention_treat_a_compacted_saga_like_any(
        self, store: SagaStore
    ) -> None:
        if not isinstance(store, PruningStore):
            pytest.skip("not a PruningStore")
        expected = await _finished(store, "kept", SagaStatus.SUCCEEDED)
        await _finished(store, "gone", SagaStatus.COMPENSATED)
        pinned = await store.set_pinned("kept", True)
        assert pinned.pinned
        assert pinned.steps == expected.steps
        cutoff = NOW + 86_400 * 400
        assert await store.prunable(finished_before=cutoff, limit=10) == ["gone"]
        assert await store.prune(["kept", "gone"], finished_before=cutoff) == ["gone"]
        assert await store.load("gone") is None
        _same(await store.get("kept"), expected)
        # The same id again starts from nothing: no step row or event of the pruned saga left.
        await store.create(new_saga("gone", at=NOW))
        again = await store.get("gone")
        assert again.steps == {}
        assert [e.type for e in again.history] == [EventType.SAGA_CREATED]
