"""The store contract, parked sagas: every store keeps a saga waiting for a reply, a signal or a
timer (``Change.park``/``unpark``), skips it in ``claim`` until then, and lists it in
``list_waiting``. Part of ``SagaStoreContract``."""

from __future__ import annotations

from typing import Any

import pytest

from sagaway.errors import (
    CancelPending,
    LeaseLost,
    UnstorableValue,
)
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
from sagaway.store.base import SagaStore
from sagaway.testing.contract_data import DEF, LEASE, T0, new_saga, running

__all__ = ["ParkedSagaContract"]


class ParkedSagaContract:
    """Parked sagas (waiting for a reply, a signal or a timer), on every store: ``Change.park``
    and ``unpark``, ``claim`` skipping a saga until ``parked_until``, ``acquire``,
    ``list_waiting``."""

    async def _parked(
        self, store: SagaStore, saga_id: str, waiting_for: str, until: float, at: float = T0
    ) -> Change:
        """A RUNNING saga leased to e1 that starts step "a" and parks, waiting for a reply."""
        await store.create(
            new_saga(saga_id, status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
        )
        change = Change(
            steps=[running("a", at=at)],
            events=[Event(at=at, type=EventType.STEP_STARTED, step="a", attempt=1)],
            park=Park(waiting_for, until),
        )
        await store.commit(saga_id, "e1", change, at)
        return change

    async def test_park_records_the_wait_and_releases_the_lease(self, store: SagaStore) -> None:
        await store.create(
            new_saga("plain", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
        )
        fresh = await store.get("plain")
        assert (fresh.waiting_for, fresh.parked_until) == (None, None)
        await self._parked(store, "s", "reply:inventory.reserve", T0 + 30)
        for record in (await store.get("s"), await store.load("s", history=False)):
            assert record is not None
            assert (record.waiting_for, record.parked_until) == ("reply:inventory.reserve", T0 + 30)
            assert (record.owner, record.lease_expires_at) == (None, None)
            assert record.status is SagaStatus.RUNNING
            assert record.step("a") == running("a")
        assert (await store.get("s")).history[-1].type is EventType.STEP_STARTED
        # A parked saga holds no lease: its former owner neither renews nor commits it.
        assert await store.renew_leases("e1", now=T0 + 1, lease_seconds=LEASE) == []
        assert (await store.get("s")).lease_expires_at is None
        with pytest.raises(LeaseLost):
            await store.commit("s", "e1", Change(unpark=True), T0 + 1)
        assert (await store.get("s")).waiting_for == "reply:inventory.reserve"

    async def test_claim_skips_a_parked_saga_until_its_deadline(self, store: SagaStore) -> None:
        await self._parked(store, "s", "reply:payment.start", T0 + 30)
        await store.create(new_saga("free"))
        args: dict[str, Any] = {"lease_seconds": LEASE, "definitions": [DEF], "limit": 10}
        early = await store.claim("e2", now=T0 + 29, **args)
        assert [r.id for r in early] == ["free"]
        assert (await store.get("s")).owner is None
        # Claimable once parked_until has passed (<= now): the rules then see a timeout. The
        # claim keeps what it waited for, so they know which step timed out.
        (late,) = await store.claim("e2", now=T0 + 30, **args)
        assert late.id == "s"
        assert (late.owner, late.lease_expires_at) == ("e2", T0 + 30 + LEASE)
        assert (late.waiting_for, late.parked_until) == ("reply:payment.start", T0 + 30)
        assert late.step("a") == running("a")
        stored = await store.get("s")
        assert (stored.owner, stored.waiting_for, stored.parked_until) == (
            "e2",
            "reply:payment.start",
            T0 + 30,
        )
        assert stored.history[-1].type is EventType.SAGA_CLAIMED
        assert await store.claim("e3", now=T0 + 31, **args) == []  # e2's lease is live

    async def test_acquire_takes_a_parked_saga_and_unpark_clears_it(self, store: SagaStore) -> None:
        await self._parked(store, "s", "reply:shipping.create", T0 + 30)
        event = Event(at=T0 + 5, type=EventType.STEP_SUCCEEDED, step="a", detail="reply")
        taken = await store.acquire(
            "s",
            "e2",
            now=T0 + 5,
            lease_seconds=LEASE,
            statuses=[SagaStatus.RUNNING],
            event=event,
        )
        assert taken is not None
        assert (taken.owner, taken.waiting_for, taken.parked_until) == (
            "e2",
            "reply:shipping.create",
            T0 + 30,
        )
        assert taken.step("a") == running("a")
        # Taken by a reply, it is no longer claimable even once the deadline passes.
        args: dict[str, Any] = {"lease_seconds": LEASE, "definitions": [DEF], "limit": 10}
        assert await store.claim("e3", now=T0 + 31, **args) == []
        done = StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output={"ok": True})
        await store.commit("s", "e2", Change(steps=[done], unpark=True), T0 + 6)
        record = await store.get("s")
        assert (record.waiting_for, record.parked_until) == (None, None)
        assert (record.owner, record.step("a")) == ("e2", done)
        assert record.history[-1] == event
        assert (await store.list_waiting()).total == 0

    async def test_park_again_replaces_the_wait(self, store: SagaStore) -> None:
        await self._parked(store, "s", "reply:payment.start", T0 + 30)
        await store.acquire(
            "s", "e2", now=T0 + 30, lease_seconds=LEASE, statuses=[SagaStatus.RUNNING]
        )
        resend = Change(steps=[running("a", attempts=2)], park=Park("reply:payment.start", T0 + 60))
        await store.commit("s", "e2", resend, T0 + 30)
        record = await store.get("s")
        assert (record.waiting_for, record.parked_until, record.owner) == (
            "reply:payment.start",
            T0 + 60,
            None,
        )
        assert record.step("a") == running("a", attempts=2)

    async def test_a_failed_commit_parks_nothing(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        park = Change(steps=[running("a")], park=Park("reply:x", T0 + 30))
        with pytest.raises(LeaseLost):
            await store.commit("s", "intruder", park, T0 + 1)
        await store.request_cancel("s", Event(at=T0, type=EventType.CANCEL_REQUESTED), T0)
        park.unless_cancelled = True
        with pytest.raises(CancelPending):
            await store.commit("s", "e1", park, T0 + 1)
        with pytest.raises(UnstorableValue):
            await store.commit("s", "e1", Change(park=Park("reply:\u0000", T0 + 30)), T0 + 1)
        record = await store.get("s")
        assert (record.owner, record.waiting_for, record.parked_until) == ("e1", None, None)
        assert record.steps == {}
        assert (await store.list_waiting()).items == []

    async def test_list_waiting(self, store: SagaStore) -> None:
        await self._parked(store, "r1", "reply:inventory.reserve", T0 + 30)
        await self._parked(store, "r2", "reply:payment.start", T0 + 10)
        await self._parked(store, "r3", "reply:inventory.release", T0 + 20)
        await self._parked(store, "r0", "reply:inventory.reserve", T0 + 20)
        await self._parked(store, "t1", "timer", T0 + 5)
        await store.create(new_saga("free"))
        page = await store.list_waiting()
        assert [r.id for r in page.items] == ["t1", "r2", "r0", "r3", "r1"]  # soonest first
        assert page.total == 5
        first = page.items[0]
        assert (first.waiting_for, first.parked_until, first.owner) == ("timer", T0 + 5, None)
        assert (first.name, first.status) == ("contract", SagaStatus.RUNNING)
        assert all(r.steps == {} and r.history == [] for r in page.items)
        page = await store.list_waiting(prefix="reply:inventory.")
        assert [r.id for r in page.items] == ["r0", "r3", "r1"]
        assert page.total == 3
        page = await store.list_waiting(prefix="reply:", limit=2, offset=1)
        assert [r.id for r in page.items] == ["r0", "r3"]
        assert page.total == 4
        assert (await store.list_waiting(prefix="signal:")).total == 0
        # A prefix is text, not a pattern.
        assert (await store.list_waiting(prefix="reply:%")).total == 0
        assert (await store.list_waiting(prefix="reply_")).total == 0
        await store.acquire(
            "r2", "e2", now=T0 + 1, lease_seconds=LEASE, statuses=[SagaStatus.RUNNING]
        )
        await store.commit("r2", "e2", Change(unpark=True), T0 + 2)
        assert [r.id for r in (await store.list_waiting()).items] == ["t1", "r0", "r3", "r1"]
