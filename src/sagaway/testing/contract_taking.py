"""The store contract, capability tier: a parked saga taken by the write that moves it on
(``TakingStore``: ``peek``, then ``commit`` with a ``Change.take``). One conditional write
replaces a take (``acquire``) and a write; these tests pin what makes that safe: the write
applies only on the row as read, of two writers racing on one read one wins, and the loser
writes nothing."""

from __future__ import annotations

import dataclasses

import pytest

from sagaway.errors import CancelPending, LeaseLost, SagaNotFound, TakeConflict
from sagaway.state import (
    ACTIVE_STATUSES,
    Change,
    Event,
    EventType,
    Park,
    SagaRecord,
    SagaStatus,
    StepStatus,
    Take,
)
from sagaway.store.base import TakingStore
from sagaway.testing.contract_data import LEASE, T0, new_saga, running

__all__ = ["TakingStoreContract"]

WAIT = "signal:go"
CANCEL = Event(at=T0, type=EventType.CANCEL_REQUESTED)


class TakingStoreContract:
    """``TakingStore``: ``peek`` writes nothing; a ``Change.take`` commits only on the row as
    read, leasing the saga to the writer, else ``TakeConflict`` with nothing written."""

    async def _parked_on_signal(self, store: TakingStore, saga_id: str = "s") -> SagaRecord:
        """A saga parked on a signal (step "a" in flight, no lease), as ``peek`` reads it."""
        await store.create(
            new_saga(saga_id, status=SagaStatus.RUNNING, owner="e1", lease_until=T0 + LEASE)
        )
        park = Change(steps=[running("a")], park=Park(WAIT, T0 + 900))
        await store.commit(saga_id, "e1", park, T0)
        record = await store.peek(saga_id)
        assert record is not None
        return record

    @staticmethod
    def _applied(read: SagaRecord, at: float, until: float | None = None) -> Change:
        """The signal's outcome as the engine writes it: step "a" done, the park cleared."""
        row = read.steps[("a", running("a").phase)]
        done = dataclasses.replace(row, status=StepStatus.SUCCEEDED, finished_at=at)
        event = Event(at=at, type=EventType.SIGNAL_RECEIVED, step="a", detail="go s-1")
        take = Take(read.fence, at + LEASE if until is None else until)
        return Change(steps=[done], events=[event], unpark=True, take=take)

    async def test_peek_reads_the_row_and_writes_nothing(self, store: TakingStore) -> None:
        read = await self._parked_on_signal(store)
        assert (read.waiting_for, read.owner, read.lease_expires_at) == (WAIT, None, None)
        assert list(read.steps) == [("a", running("a").phase)]
        assert read.history == []
        again = await store.peek("s")
        assert again is not None
        assert again.fence == read.fence
        assert len((await store.get("s")).history) == 1  # SAGA_CREATED only
        assert await store.peek("unknown") is None

    async def test_peek_reads_what_get_reads_but_the_history(self, store: TakingStore) -> None:
        """In each state a signal may find a saga: no step rows yet, parked with several,
        taken and running, and finished (compacted, on a store that packs finished sagas)."""
        await store.create(new_saga("fresh"))
        await self._parked_on_signal(store, "parked")
        applied = self._applied(await self._parked_on_signal(store, "taken"), T0 + 5)
        applied.steps.append(running("b", at=T0 + 5))
        await store.commit("taken", "e2", applied, T0 + 5)
        applied = self._applied(await self._parked_on_signal(store, "done"), T0 + 5)
        await store.commit("done", "e2", applied, T0 + 5)
        await store.commit("done", "e2", Change(status=SagaStatus.SUCCEEDED), T0 + 6)
        for saga_id, steps in [("fresh", 0), ("parked", 1), ("taken", 2), ("done", 1)]:
            peeked = await store.peek(saga_id)
            assert peeked is not None
            assert len(peeked.steps) == steps
            assert peeked == (await store.get(saga_id)).copy(history=False)

    async def test_a_take_leases_the_saga_and_applies_the_change(self, store: TakingStore) -> None:
        read = await self._parked_on_signal(store)
        await store.commit("s", "e2", self._applied(read, T0 + 5), T0 + 5)
        record = await store.get("s")
        assert (record.owner, record.lease_expires_at) == ("e2", T0 + 5 + LEASE)
        assert (record.waiting_for, record.parked_until) == (None, None)
        assert record.steps[("a", running("a").phase)].status is StepStatus.SUCCEEDED
        assert record.history[-1].type is EventType.SIGNAL_RECEIVED
        # The lease is the writer's now: fenced on it as usual.
        await store.commit("s", "e2", Change(status=SagaStatus.SUCCEEDED), T0 + 6)
        with pytest.raises(LeaseLost):
            await store.commit("s", "e1", Change(), T0 + 7)
        taken = await store.acquire(
            "s", "e3", now=T0 + 7, lease_seconds=LEASE, statuses=ACTIVE_STATUSES
        )
        assert taken is None  # SUCCEEDED

    async def test_of_two_takes_on_one_read_one_wins(self, store: TakingStore) -> None:
        read = await self._parked_on_signal(store)
        await store.commit("s", "e2", self._applied(read, T0 + 5), T0 + 5)
        before = await store.get("s")
        with pytest.raises(TakeConflict):
            await store.commit("s", "e3", self._applied(read, T0 + 5), T0 + 5)
        after = await store.get("s")
        assert after.owner == "e2"
        assert len(after.history) == len(before.history)
        # A conflict is a LeaseLost: code that stops on a lost lease stops on it too.
        assert issubclass(TakeConflict, LeaseLost)

    async def test_any_write_since_the_read_is_a_conflict(self, store: TakingStore) -> None:
        """Taken and parked again on the same wait, at the same time (an ABA): the row looks
        as it did, but it was written, and the decision made on the old read must not land."""
        read = await self._parked_on_signal(store)
        taken = await store.acquire(
            "s", "e3", now=T0, lease_seconds=LEASE, statuses=ACTIVE_STATUSES
        )
        assert taken is not None
        await store.commit("s", "e3", Change(park=Park(WAIT, T0 + 900)), T0)
        same = await store.peek("s")
        assert same is not None
        assert (same.waiting_for, same.owner) == (WAIT, None)
        with pytest.raises(TakeConflict):
            await store.commit("s", "e2", self._applied(read, T0), T0)
        record = await store.get("s")
        assert record.waiting_for == WAIT
        assert record.owner is None
        # A read made after that write takes it.
        await store.commit("s", "e2", self._applied(same, T0 + 1), T0 + 1)
        assert (await store.get("s")).owner == "e2"

    async def test_a_cancel_since_the_read_is_a_conflict(self, store: TakingStore) -> None:
        read = await self._parked_on_signal(store)
        await store.request_cancel("s", CANCEL, T0, until="b")
        with pytest.raises(TakeConflict):
            await store.commit("s", "e2", self._applied(read, T0 + 1), T0 + 1)
        assert (await store.get("s")).waiting_for == WAIT

    async def test_a_cancel_read_stops_a_step_start_with_cancel_pending(
        self, store: TakingStore
    ) -> None:
        await self._parked_on_signal(store)
        await store.request_cancel("s", CANCEL, T0, until="b")
        read = await store.peek("s")
        assert read is not None
        assert read.cancel_requested
        change = self._applied(read, T0 + 1)
        change.steps.append(running("b", at=T0 + 1))
        change.unless_cancelled = True
        with pytest.raises(CancelPending):
            await store.commit("s", "e2", change, T0 + 1)
        record = await store.get("s")
        assert (record.waiting_for, record.owner) == (WAIT, None)
        assert ("b", running("b").phase) not in record.steps

    async def test_a_live_lease_is_a_conflict_an_expired_one_is_not(
        self, store: TakingStore
    ) -> None:
        await self._parked_on_signal(store)
        held = await store.acquire("s", "e3", now=T0, lease_seconds=LEASE, statuses=ACTIVE_STATUSES)
        assert held is not None
        read = await store.peek("s")
        assert read is not None
        assert read.owner == "e3"
        with pytest.raises(TakeConflict):
            await store.commit("s", "e2", self._applied(read, T0 + 1), T0 + 1)
        late = T0 + LEASE + 1  # e3's lease has run out
        await store.commit("s", "e2", self._applied(read, late), late)
        assert (await store.get("s")).owner == "e2"

    async def test_a_take_that_parks_again_leaves_no_lease(self, store: TakingStore) -> None:
        """An engine that records a signal for the engine running the saga (its park made
        due now) takes and hands back the saga in one write."""
        read = await self._parked_on_signal(store)
        change = Change(take=Take(read.fence, T0 + 1 + LEASE), park=Park(WAIT, T0 + 1))
        await store.commit("s", "e2", change, T0 + 1)
        record = await store.peek("s")
        assert record is not None
        assert (record.owner, record.lease_expires_at) == (None, None)
        assert (record.waiting_for, record.parked_until) == (WAIT, T0 + 1)
        assert record.fence != read.fence

    async def test_a_take_of_an_unknown_saga(self, store: TakingStore) -> None:
        with pytest.raises(SagaNotFound):
            await store.commit("nope", "e2", Change(take=Take(0, T0 + LEASE)), T0)
