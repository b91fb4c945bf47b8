"""The contract of the retention tier (``sagaway.store.base.PruningStore``): which sagas
``prunable`` offers and ``prune`` removes, what goes with them, and pins.

A backend's test module adds ``PruningStoreContract`` to its test class, with the same ``store``
fixture as ``SagaStoreContract``.
"""

from __future__ import annotations

import pytest

from sagaway.errors import SagaNotFound
from sagaway.state import (
    Change,
    Event,
    EventType,
    Park,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store.base import OutboxStore, PruningStore
from sagaway.testing.contract import T0, new_saga
from sagaway.testing.contract_tiers import message

__all__ = ["PruningStoreContract"]

# Sagas below finish at T0 + 10 ("old") or T0 + 500 ("recent"); the cutoff lies between.
OLD, RECENT, CUTOFF = T0 + 10, T0 + 500, T0 + 100

_END_EVENT = {
    SagaStatus.SUCCEEDED: EventType.SAGA_SUCCEEDED,
    SagaStatus.COMPENSATED: EventType.SAGA_COMPENSATED,
    SagaStatus.FAILED: EventType.SAGA_FAILED,
}


async def _saga(
    store: PruningStore,
    saga_id: str,
    status: SagaStatus,
    *,
    at: float = OLD,
    key: str | None = None,
    created: float = T0,
) -> None:
    """A saga created at ``created`` that, at ``at``, has one step done and is in ``status``."""
    await store.create(
        new_saga(
            saga_id, status=SagaStatus.RUNNING, owner="e1", lease_until=2e4, key=key, at=created
        )
    )
    step = StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output={"n": 1}, started_at=at)
    change = Change(
        steps=[step], events=[Event(at=at, type=EventType.STEP_SUCCEEDED, step="a", attempt=1)]
    )
    if status in _END_EVENT:
        change.status = status
        change.release_lease = True
        change.events.append(Event(at=at, type=_END_EVENT[status]))
    await store.commit(saga_id, "e1", change, at)


class PruningStoreContract:
    """What ``PruningStore`` promises: only finished, unpinned, old sagas go, with their rows."""

    async def test_only_finished_unpinned_old_sagas_are_prunable(self, store: PruningStore) -> None:
        assert isinstance(store, PruningStore)
        await _saga(store, "succeeded", SagaStatus.SUCCEEDED)
        await _saga(store, "compensated", SagaStatus.COMPENSATED)
        await _saga(store, "failed", SagaStatus.FAILED)  # an operator may still retry it
        await _saga(store, "running", SagaStatus.RUNNING)
        await store.create(new_saga("pending"))
        await _saga(store, "parked", SagaStatus.RUNNING)
        await store.commit("parked", "e1", Change(park=Park("signal:paid", T0 + 1e6)), OLD)
        await _saga(store, "recent", SagaStatus.SUCCEEDED, at=RECENT)
        await _saga(store, "pinned", SagaStatus.SUCCEEDED)
        await store.set_pinned("pinned", True)

        offered = await store.prunable(finished_before=CUTOFF, limit=100)
        assert sorted(offered) == ["compensated", "succeeded"]
        assert sorted(await store.prune(offered, finished_before=CUTOFF)) == sorted(offered)
        for gone in ("succeeded", "compensated"):
            assert await store.load(gone) is None
        kept = ["failed", "running", "pending", "parked", "recent", "pinned"]
        for saga_id in kept:
            assert await store.load(saga_id) is not None, saga_id
        assert await store.prunable(finished_before=CUTOFF, limit=100) == []
        # Asking to prune what is not prunable removes nothing.
        assert await store.prune([*kept, "unknown"], finished_before=CUTOFF) == []
        assert sorted(r.id for r in (await store.list_sagas(limit=100)).items) == sorted(kept)
        assert sum((await store.counts()).values()) == len(kept)
        # A later cutoff reaches the recent one.
        assert await store.prunable(finished_before=RECENT + 1, limit=100) == ["recent"]

    async def test_a_pruned_saga_takes_its_steps_events_and_key_with_it(
        self, store: PruningStore
    ) -> None:
        await _saga(store, "s1", SagaStatus.SUCCEEDED, key="order-1")
        assert await store.prune(["s1"], finished_before=CUTOFF) == ["s1"]
        # The same id again starts from nothing: no step row, no event of the pruned saga.
        await store.create(new_saga("s1", at=RECENT))
        again = await store.get("s1")
        assert again.steps == {}
        assert [e.type for e in again.history] == [EventType.SAGA_CREATED]
        assert again.created_at == RECENT
        # Its idempotency key is forgotten with it (retention must outlast client retries).
        assert await store.create(new_saga("s2", key="order-1", at=RECENT)) == ("s2", True)

    async def test_a_pruned_saga_takes_its_outbox_messages_with_it(
        self, store: PruningStore
    ) -> None:
        if not isinstance(store, OutboxStore):
            pytest.skip("no outbox tier")
        await _saga(store, "done", SagaStatus.SUCCEEDED)
        await _saga(store, "busy", SagaStatus.RUNNING)
        for saga_id in ("done", "busy"):
            change = Change(outbox=(message(f"{saga_id}:m", saga_id),))
            await store.commit(saga_id, None, change, OLD)
        assert await store.prune(["done", "busy"], finished_before=CUTOFF) == ["done"]
        assert [m.id for m in await store.outbox_pending(limit=10)] == ["busy:m"]

    async def test_prune_rechecks_what_prunable_offered(self, store: PruningStore) -> None:
        for saga_id in ("a", "b", "c"):
            await _saga(store, saga_id, SagaStatus.SUCCEEDED)
        offered = await store.prunable(finished_before=CUTOFF, limit=10)
        assert sorted(offered) == ["a", "b", "c"]
        # Meanwhile a user pins one: it stays.
        await store.set_pinned("b", True)
        assert sorted(await store.prune(offered, finished_before=CUTOFF)) == ["a", "c"]
        assert (await store.get("b")).pinned

    async def test_prunable_pages_oldest_first(self, store: PruningStore) -> None:
        for n in range(5):
            await _saga(store, f"s{n}", SagaStatus.SUCCEEDED, at=OLD + n, created=T0 + n)
        assert await store.prunable(finished_before=CUTOFF, limit=2) == ["s0", "s1"]
        assert await store.prunable(finished_before=OLD + 3, limit=10) == ["s0", "s1", "s2"]
        assert await store.prunable(finished_before=CUTOFF, limit=0) == []
        removed: list[str] = []
        while batch := await store.prunable(finished_before=CUTOFF, limit=2):
            removed += await store.prune(batch, finished_before=CUTOFF)
        assert removed == [f"s{n}" for n in range(5)]

    async def test_prune_next_removes_the_oldest_prunable_batch(self, store: PruningStore) -> None:
        for n in range(4):
            await _saga(store, f"s{n}", SagaStatus.SUCCEEDED, at=OLD + n, created=T0 + n)
        await _saga(store, "recent", SagaStatus.SUCCEEDED, at=RECENT)
        await _saga(store, "running", SagaStatus.RUNNING)
        await store.set_pinned("s0", True)
        assert sorted(await store.prune_next(finished_before=CUTOFF, limit=2)) == ["s1", "s2"]
        assert await store.prune_next(finished_before=CUTOFF, limit=2) == ["s3"]
        assert await store.prune_next(finished_before=CUTOFF, limit=2) == []
        left = sorted(r.id for r in (await store.list_sagas(limit=10)).items)
        assert left == ["recent", "running", "s0"]

    async def test_pin_shows_on_the_record_and_unpin_makes_it_prunable(
        self, store: PruningStore
    ) -> None:
        await _saga(store, "s", SagaStatus.SUCCEEDED)
        await _saga(store, "r", SagaStatus.RUNNING)
        assert not (await store.get("s")).pinned
        pinned = await store.set_pinned("s", True)
        assert pinned.pinned
        assert pinned.status is SagaStatus.SUCCEEDED
        assert pinned.updated_at == OLD  # a pin is not a write of the saga's own
        assert (await store.get("s")).pinned
        listed = {r.id: r.pinned for r in (await store.list_sagas(limit=10)).items}
        assert listed == {"s": True, "r": False}
        assert await store.set_pinned("s", True) == pinned  # pinning twice changes nothing
        assert await store.prunable(finished_before=CUTOFF, limit=10) == []
        # Any saga can be pinned, a running one too; it keeps running.
        assert (await store.set_pinned("r", True)).pinned
        await store.commit("r", "e1", Change(status=SagaStatus.SUCCEEDED), OLD + 1)
        assert (await store.get("r")).pinned
        assert not (await store.set_pinned("s", False)).pinned
        assert not (await store.set_pinned("r", False)).pinned
        assert sorted(await store.prunable(finished_before=CUTOFF, limit=10)) == ["r", "s"]
        with pytest.raises(SagaNotFound):
            await store.set_pinned("missing", True)
