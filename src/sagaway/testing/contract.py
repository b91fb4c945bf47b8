"""The saga store contract as tests: every backend must pass the same ones.

Subclass ``SagaStoreContract`` in a test module and provide an async fixture ``store`` that
yields an opened, empty store::

    class TestMyStore(SagaStoreContract):
        @pytest.fixture
        async def store(self) -> AsyncIterator[SagaStore]:
            async with MyStore(...) as store:
                yield store

The tests are async methods (run them with pytest-asyncio; in strict mode decorate the fixture
with ``pytest_asyncio.fixture``). They pass explicit times and never sleep, so they are fast
and deterministic on any backend. This module is the only place sagaway imports pytest.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from sagaway.errors import (
    CancelPending,
    CancelRefused,
    InvalidTransition,
    LeaseLost,
    SagaNotFound,
    UnstorableValue,
)
from sagaway.state import (
    Change,
    Event,
    EventType,
    NewSaga,
    Park,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store.base import SagaStore

__all__ = ["ParkedSagaContract", "SagaStoreContract"]

DEF = ("contract", 1)
T0 = 1_000.0
LEASE = 30.0


def new_saga(
    saga_id: str,
    *,
    at: float = T0,
    name: str = DEF[0],
    version: int = DEF[1],
    status: SagaStatus = SagaStatus.PENDING,
    key: str | None = None,
    owner: str | None = None,
    lease_until: float | None = None,
    input: Any = None,
) -> NewSaga:
    return NewSaga(
        id=saga_id,
        name=name,
        version=version,
        input={"order": saga_id} if input is None else input,
        at=at,
        status=status,
        idempotency_key=key,
        owner=owner,
        lease_expires_at=lease_until,
        events=[Event(at=at, type=EventType.SAGA_CREATED)],
    )


# Values no store can keep (not JSON, NaN/infinity, NUL, a lone surrogate): every store refuses
# them with UnstorableValue, before anything is written or batched.
UNSTORABLE: list[Any] = [
    object(),
    b"bytes",
    math.nan,
    -math.inf,
    "nul \u0000 inside",
    "\ud800",
    {"deep": [1, {"x": object()}]},
    {"key \u0000": 1},
]


def running(step: str, attempts: int = 1, at: float = T0) -> StepRecord:
    return StepRecord(step, Phase.FORWARD, StepStatus.RUNNING, attempts=attempts, started_at=at)


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


class SagaStoreContract(ParkedSagaContract):
    """What ``sagaway.store.base.SagaStore`` promises, checked against one backend (parked
    sagas included: every store supports them)."""

    # -- create and idempotency -------------------------------------------------------------

    async def test_create_then_load(self, store: SagaStore) -> None:
        new = new_saga("s1", status=SagaStatus.RUNNING, owner="e1", lease_until=T0 + LEASE)
        new.deadline_at = T0 + 60
        new.steps = [running("reserve")]
        new.events.append(Event(at=T0, type=EventType.STEP_STARTED, step="reserve", attempt=1))
        assert await store.create(new) == ("s1", True)
        record = await store.get("s1")
        assert (record.id, record.name, record.version) == ("s1", "contract", 1)
        assert record.status is SagaStatus.RUNNING
        assert record.input == {"order": "s1"}
        assert (record.created_at, record.updated_at) == (T0, T0)
        assert (record.owner, record.lease_expires_at) == ("e1", T0 + LEASE)
        assert record.deadline_at == T0 + 60
        assert record.cancel_requested is False
        assert record.error is None
        assert record.step("reserve") == running("reserve")
        assert [e.type for e in record.history] == [
            EventType.SAGA_CREATED,
            EventType.STEP_STARTED,
        ]
        assert record.history[1] == Event(
            at=T0, type=EventType.STEP_STARTED, step="reserve", attempt=1
        )

    async def test_idempotency_key_creates_once(self, store: SagaStore) -> None:
        assert await store.create(new_saga("first", key="order-42")) == ("first", True)
        again = new_saga("second", key="order-42", input={"other": True})
        assert await store.create(again) == ("first", False)
        assert await store.load("second") is None
        first = await store.get("first")
        assert first.input == {"order": "first"}
        assert len(first.history) == 1
        assert (await store.list_sagas()).total == 1

    async def test_concurrent_creates_with_one_key_create_one_saga(self, store: SagaStore) -> None:
        results = await asyncio.gather(
            *(store.create(new_saga(f"c{i}", key="same")) for i in range(8))
        )
        assert sum(created for _, created in results) == 1
        assert len({saga_id for saga_id, _ in results}) == 1
        assert (await store.list_sagas()).total == 1

    async def test_sagas_without_key_never_collide(self, store: SagaStore) -> None:
        await store.create(new_saga("a"))
        await store.create(new_saga("b"))
        assert (await store.list_sagas()).total == 2

    # -- commit -----------------------------------------------------------------------------

    async def test_commit_applies_the_whole_change(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        done = StepRecord(
            "reserve",
            Phase.FORWARD,
            StepStatus.SUCCEEDED,
            attempts=2,
            output={"reservation": [1, 2, {"x": None}]},
            started_at=T0,
            finished_at=T0 + 1,
        )
        change = Change(
            steps=[done, running("charge", at=T0 + 1)],
            events=[
                Event(at=T0 + 1, type=EventType.STEP_SUCCEEDED, step="reserve", attempt=2),
                Event(at=T0 + 1, type=EventType.STEP_STARTED, step="charge", attempt=1),
            ],
        )
        await store.commit("s", "e1", change, T0 + 1)
        record = await store.get("s")
        assert record.status is SagaStatus.RUNNING  # no status in the change: unchanged
        assert record.updated_at == T0 + 1
        assert record.step("reserve") == done
        assert record.step("charge") == running("charge", at=T0 + 1)
        assert record.output("reserve") == {"reservation": [1, 2, {"x": None}]}
        assert [e.type for e in record.history][1:] == [
            EventType.STEP_SUCCEEDED,
            EventType.STEP_STARTED,
        ]
        assert record.owner == "e1"

    async def test_commit_status_error_and_step_upsert(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        await store.commit("s", "e1", Change(steps=[running("charge")]), T0 + 1)
        failed = StepRecord(
            "charge", Phase.FORWARD, StepStatus.FAILED, 1, error="declined", uncertain=True
        )
        undo = StepRecord("charge", Phase.COMPENSATION, StepStatus.COMPENSATING, 1)
        change = Change(status=SagaStatus.COMPENSATING, error="declined", steps=[failed, undo])
        await store.commit("s", "e1", change, T0 + 2)
        record = await store.get("s")
        assert (record.status, record.error) == (SagaStatus.COMPENSATING, "declined")
        assert record.step("charge") == failed  # replaced, not duplicated
        assert record.step("charge", Phase.COMPENSATION) == undo
        assert len(record.steps) == 2
        # A change without a status keeps both status and error.
        await store.commit("s", "e1", Change(events=[]), T0 + 3)
        record = await store.get("s")
        assert (record.status, record.error) == (SagaStatus.COMPENSATING, "declined")

    async def test_commit_release_lease_and_clear_cancel(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        await store.request_cancel("s", Event(at=T0, type=EventType.CANCEL_REQUESTED), T0)
        change = Change(status=SagaStatus.COMPENSATING, error="cancelled", clear_cancel=True)
        await store.commit("s", "e1", change, T0 + 1)
        assert (await store.get("s")).cancel_requested is False
        await store.commit("s", "e1", Change(SagaStatus.COMPENSATED, release_lease=True), T0 + 2)
        record = await store.get("s")
        assert record.status is SagaStatus.COMPENSATED
        assert (record.owner, record.lease_expires_at) == (None, None)

    async def test_commit_by_another_owner_is_lease_lost(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        change = Change(
            status=SagaStatus.SUCCEEDED,
            steps=[running("x")],
            events=[Event(at=T0, type=EventType.SAGA_SUCCEEDED)],
        )
        with pytest.raises(LeaseLost):
            await store.commit("s", "e2", change, T0 + 1)
        record = await store.get("s")  # nothing of the change was written
        assert record.status is SagaStatus.RUNNING
        assert record.steps == {}
        assert len(record.history) == 1
        assert record.updated_at == T0
        # Admin writes (owner None) are not fenced.
        await store.commit("s", None, Change(events=[change.events[0]]), T0 + 2)
        assert len((await store.get("s")).history) == 2

    async def test_commit_on_unowned_saga_with_owner_is_lease_lost(self, store: SagaStore) -> None:
        await store.create(new_saga("s"))
        with pytest.raises(LeaseLost):
            await store.commit("s", "e1", Change(), T0 + 1)

    async def test_commit_unknown_saga(self, store: SagaStore) -> None:
        with pytest.raises(SagaNotFound):
            await store.commit("nope", "e1", Change(), T0)
        with pytest.raises(SagaNotFound):
            await store.commit("nope", None, Change(), T0)

    async def test_failed_commit_does_not_affect_concurrent_ones(self, store: SagaStore) -> None:
        for i in range(4):
            await store.create(
                new_saga(f"s{i}", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
            )
        event = Event(at=T0 + 1, type=EventType.STEP_STARTED, step="x")
        results = await asyncio.gather(
            store.commit("s0", "e1", Change(events=[event]), T0 + 1),
            store.commit("s1", "intruder", Change(events=[event]), T0 + 1),
            store.commit("missing", "e1", Change(events=[event]), T0 + 1),
            store.commit("s2", "e1", Change(events=[event]), T0 + 1),
            return_exceptions=True,
        )
        assert results[0] is None
        assert isinstance(results[1], LeaseLost)
        assert isinstance(results[2], SagaNotFound)
        assert results[3] is None
        assert [len((await store.get(f"s{i}")).history) for i in range(4)] == [2, 1, 2, 1]

    # -- load, list, counts -----------------------------------------------------------------

    async def test_load_unknown_and_without_history(self, store: SagaStore) -> None:
        assert await store.load("nope") is None
        with pytest.raises(SagaNotFound):
            await store.get("nope")
        new = new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
        new.steps = [running("a")]
        await store.create(new)
        record = await store.load("s", history=False)
        assert record is not None
        assert record.history == []
        assert record.step("a") == running("a")

    async def test_history_keeps_order_across_commits(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        expected = [EventType.SAGA_CREATED]
        kinds = [EventType.STEP_STARTED, EventType.STEP_RETRYING, EventType.STEP_SUCCEEDED]
        for i in range(6):
            # Same timestamp on purpose: order is the store's, not the clock's.
            batch = [Event(at=T0, type=k, step=f"s{i}", attempt=i) for k in kinds]
            expected.extend(kinds)
            await store.commit("s", "e1", Change(events=batch), T0)
        history = (await store.get("s")).history
        assert [e.type for e in history] == expected
        assert [e.step for e in history[1:4]] == ["s0"] * 3

    async def test_event_fields_round_trip(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        event = Event(
            at=T0 + 0.25,
            type=EventType.COMPENSATION_RETRYING,
            step="refund",
            phase=Phase.COMPENSATION,
            attempt=3,
            detail="ConnectionError: réseau indisponible ✗",
        )
        await store.commit("s", "e1", Change(events=[event]), T0 + 1)
        assert (await store.get("s")).history[-1] == event

    async def test_list_newest_first_with_filters_and_paging(self, store: SagaStore) -> None:
        for i in range(7):
            name = "a" if i % 2 else "b"
            status = SagaStatus.RUNNING if i < 4 else SagaStatus.PENDING
            await store.create(new_saga(f"s{i}", at=T0 + i, name=name, status=status))
        # Same created_at: the id breaks the tie, still newest (largest) first.
        await store.create(new_saga("s7a", at=T0 + 6))
        page = await store.list_sagas()
        assert [r.id for r in page.items] == ["s7a", "s6", "s5", "s4", "s3", "s2", "s1", "s0"]
        assert page.total == 8
        assert all(r.steps == {} and r.history == [] for r in page.items)
        page = await store.list_sagas(limit=3, offset=2)
        assert [r.id for r in page.items] == ["s5", "s4", "s3"]
        assert page.total == 8
        page = await store.list_sagas(name="a")
        assert [r.id for r in page.items] == ["s5", "s3", "s1"]
        assert page.total == 3
        page = await store.list_sagas(status=SagaStatus.RUNNING, name="b", limit=1)
        assert [r.id for r in page.items] == ["s2"]
        assert page.total == 2
        page = await store.list_sagas(status=SagaStatus.FAILED)
        assert (page.items, page.total) == ([], 0)
        assert (await store.list_sagas(offset=100)).total == 8

    async def test_counts(self, store: SagaStore) -> None:
        assert await store.counts() == {}
        await store.create(new_saga("a"))
        await store.create(new_saga("b"))
        await store.create(new_saga("c", status=SagaStatus.RUNNING, owner="e", lease_until=2e3))
        await store.commit("c", "e", Change(SagaStatus.SUCCEEDED, release_lease=True), T0)
        assert await store.counts() == {SagaStatus.PENDING: 2, SagaStatus.SUCCEEDED: 1}

    # -- claim ------------------------------------------------------------------------------

    async def test_claim_takes_free_and_expired_sagas(self, store: SagaStore) -> None:
        await store.create(new_saga("free"))
        await store.create(
            new_saga("expired", status=SagaStatus.RUNNING, owner="old", lease_until=T0 - 1)
        )
        await store.create(new_saga("live", status=SagaStatus.RUNNING, owner="o", lease_until=2e3))
        await store.create(new_saga("undo", status=SagaStatus.COMPENSATING))
        for i, status in enumerate(
            [SagaStatus.SUCCEEDED, SagaStatus.COMPENSATED, SagaStatus.FAILED]
        ):
            await store.create(new_saga(f"done{i}", status=status))
        claimed = await store.claim("me", now=T0, lease_seconds=LEASE, definitions=[DEF], limit=100)
        assert sorted(r.id for r in claimed) == ["expired", "free", "undo"]
        for record in claimed:
            assert (record.owner, record.lease_expires_at) == ("me", T0 + LEASE)
            stored = await store.get(record.id)
            assert (stored.owner, stored.lease_expires_at) == ("me", T0 + LEASE)
            last = stored.history[-1]
            assert (last.type, last.detail, last.at) == (EventType.SAGA_CLAIMED, "me", T0)
        live = await store.get("live")
        assert live.owner == "o"
        assert live.history[-1].type is EventType.SAGA_CREATED
        again = await store.claim("me", now=T0, lease_seconds=LEASE, definitions=[DEF], limit=9)
        assert again == []

    async def test_claim_returns_steps_loaded(self, store: SagaStore) -> None:
        new = new_saga("s", status=SagaStatus.RUNNING, owner="old", lease_until=T0 - 1)
        new.steps = [running("a"), StepRecord("b", Phase.COMPENSATION, StepStatus.COMPENSATED)]
        await store.create(new)
        (record,) = await store.claim("me", now=T0, lease_seconds=1, definitions=[DEF], limit=5)
        assert record.step("a") == running("a")
        assert record.step("b", Phase.COMPENSATION) is not None
        assert record.input == {"order": "s"}

    async def test_claim_include_own(self, store: SagaStore) -> None:
        await store.create(new_saga("mine", status=SagaStatus.RUNNING, owner="me", lease_until=2e3))
        args: dict[str, Any] = {"now": T0, "lease_seconds": LEASE, "definitions": [DEF]}
        assert await store.claim("me", limit=5, **args) == []
        (record,) = await store.claim("me", limit=5, include_own=True, **args)
        assert (record.id, record.lease_expires_at) == ("mine", T0 + LEASE)
        assert await store.claim("other", limit=5, include_own=True, **args) == []

    async def test_claim_filters_definitions_and_honours_limit(self, store: SagaStore) -> None:
        for i in range(5):
            await store.create(new_saga(f"v1-{i}", at=T0 + i))
        await store.create(new_saga("v2", version=2))
        await store.create(new_saga("other", name="other"))
        args: dict[str, Any] = {"now": T0, "lease_seconds": LEASE}
        assert await store.claim("me", definitions=[], limit=10, **args) == []
        assert await store.claim("me", definitions=[DEF], limit=0, **args) == []
        first = await store.claim("me", definitions=[DEF], limit=3, **args)
        assert len(first) == 3
        rest = await store.claim("me", definitions=[DEF], limit=10, **args)
        assert {r.id for r in first} | {r.id for r in rest} == {f"v1-{i}" for i in range(5)}
        both = await store.claim("me", definitions=[("contract", 2), ("other", 1)], limit=9, **args)
        assert sorted(r.id for r in both) == ["other", "v2"]

    async def test_concurrent_claims_never_share_a_saga(self, store: SagaStore) -> None:
        for i in range(40):
            await store.create(new_saga(f"s{i:02}", at=T0 + i))
        claims = await asyncio.gather(
            *(
                store.claim(f"e{n}", now=T0, lease_seconds=LEASE, definitions=[DEF], limit=7)
                for n in range(8)
            )
        )
        ids = [record.id for claimed in claims for record in claimed]
        assert len(ids) == len(set(ids)) == 40
        for n, claimed in enumerate(claims):
            for record in claimed:
                assert (await store.get(record.id)).owner == f"e{n}"

    # -- acquire ----------------------------------------------------------------------------

    async def test_acquire(self, store: SagaStore) -> None:
        await store.create(new_saga("f", status=SagaStatus.FAILED))
        await store.create(new_saga("live", status=SagaStatus.RUNNING, owner="o", lease_until=2e3))
        await store.create(new_saga("old", status=SagaStatus.RUNNING, owner="o", lease_until=T0))
        args: dict[str, Any] = {"now": T0 + 1, "lease_seconds": LEASE}
        event = Event(at=T0 + 1, type=EventType.RETRY_REQUESTED)
        active = [SagaStatus.RUNNING, SagaStatus.COMPENSATING]
        assert await store.acquire("f", "me", statuses=active, **args) is None
        taken = await store.acquire("f", "me", statuses=[SagaStatus.FAILED], event=event, **args)
        assert taken is not None
        assert (taken.owner, taken.lease_expires_at) == ("me", T0 + 1 + LEASE)
        stored = await store.get("f")
        assert (stored.owner, stored.history[-1]) == ("me", event)
        assert await store.acquire("live", "me", statuses=active, event=event, **args) is None
        assert (await store.get("live")).history[-1].type is EventType.SAGA_CREATED
        assert await store.acquire("old", "me", statuses=active, **args) is not None
        # Our own live lease is no obstacle (it is renewed).
        again = await store.acquire("old", "me", statuses=active, now=T0 + 2, lease_seconds=5)
        assert again is not None
        assert again.lease_expires_at == T0 + 7
        with pytest.raises(SagaNotFound):
            await store.acquire("nope", "me", statuses=active, **args)

    # -- leases and cancellation ------------------------------------------------------------

    async def test_renew_leases(self, store: SagaStore) -> None:
        for saga_id, owner in [("a", "me"), ("b", "me"), ("c", "other")]:
            await store.create(
                new_saga(saga_id, status=SagaStatus.RUNNING, owner=owner, lease_until=T0 + 5)
            )
        await store.create(new_saga("d", status=SagaStatus.RUNNING, owner="me", lease_until=T0))
        await store.commit("d", "me", Change(SagaStatus.SUCCEEDED), T0)  # terminal, still owned
        await store.request_cancel("b", Event(at=T0, type=EventType.CANCEL_REQUESTED), T0)
        cancelled = await store.renew_leases("me", now=T0 + 3, lease_seconds=LEASE)
        assert cancelled == ["b"]
        leases = {i: (await store.get(i)).lease_expires_at for i in "abcd"}
        assert leases == {"a": T0 + 3 + LEASE, "b": T0 + 3 + LEASE, "c": T0 + 5, "d": T0}
        assert await store.renew_leases("nobody", now=T0, lease_seconds=LEASE) == []

    async def test_request_cancel(self, store: SagaStore) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        event = Event(at=T0 + 1, type=EventType.CANCEL_REQUESTED, detail="operator")
        record = await store.request_cancel("s", event, T0 + 1)
        assert record.cancel_requested is True
        assert record.history[-1] == event
        stored = await store.get("s")
        assert (stored.cancel_requested, stored.updated_at) == (True, T0 + 1)
        assert stored.owner == "e1"  # the running engine keeps the saga and compensates it
        await store.commit("s", "e1", Change(SagaStatus.COMPENSATED, release_lease=True), T0 + 2)
        with pytest.raises(InvalidTransition):
            await store.request_cancel("s", event, T0 + 3)
        with pytest.raises(SagaNotFound):
            await store.request_cancel("nope", event, T0 + 3)

    # -- values -----------------------------------------------------------------------------

    async def test_records_are_copies(self, store: SagaStore) -> None:
        # A record, its step map and its history are copies. Step rows and JSON values inside
        # them are read-only by convention (the memory store shares them: SagaRecord.copy).
        new = new_saga("s", status=SagaStatus.RUNNING, owner="old", lease_until=T0 - 1)
        new.steps = [running("a")]
        await store.create(new)
        record = await store.get("s")
        record.status = SagaStatus.FAILED
        record.input = {"order": "mutated"}
        record.steps[("a", Phase.FORWARD)] = running("a", attempts=42)
        record.history.clear()
        (claimed,) = await store.claim("me", now=T0, lease_seconds=1, definitions=[DEF], limit=1)
        claimed.steps.clear()
        (page_item,) = (await store.list_sagas()).items
        page_item.name = "mutated"
        fresh = await store.get("s")
        assert fresh.status is SagaStatus.RUNNING
        assert fresh.input == {"order": "s"}
        assert fresh.step("a") == running("a")
        assert len(fresh.history) == 2
        assert fresh.name == "contract"

    async def test_json_round_trip_and_unicode(self, store: SagaStore) -> None:
        value: Any = {
            "nested": {"list": [1, 2.5, None, True, False, "x"], "empty": {}, "none": None},
            "unicode": "Zoë ✓ 日本語 🚀",
            "big": 2**53,
            "quote": 'he said "hi"\n',
        }
        await store.create(
            new_saga(
                "ü-1",
                name="checkout-ß",
                status=SagaStatus.RUNNING,
                owner="é",
                lease_until=2e3,
                key="clé-✓",
                input=value,
            )
        )
        out = StepRecord(
            "réserver",
            Phase.FORWARD,
            StepStatus.SUCCEEDED,
            1,
            output=[value, "x", 3],
            error="ok ✓",
        )
        await store.commit("ü-1", "é", Change(SagaStatus.FAILED, error="échec 💥", steps=[out]), T0)
        record = await store.get("ü-1")
        assert record.input == value
        assert (record.name, record.idempotency_key) == ("checkout-ß", "clé-✓")
        assert record.output("réserver") == [value, "x", 3]
        assert record.step("réserver") == out
        assert record.error == "échec 💥"
        assert [r.id for r in (await store.list_sagas(name="checkout-ß")).items] == ["ü-1"]
        scalars: list[Any] = ["just a string", 42, [], 0.5, True]
        for scalar in scalars:
            await store.create(new_saga(f"scalar-{scalar!r}", input=scalar))
            assert (await store.get(f"scalar-{scalar!r}")).input == scalar

    # -- values the log cannot store --------------------------------------------------------

    async def test_unstorable_values_are_refused_and_nothing_is_written(
        self, store: SagaStore
    ) -> None:
        await store.create(new_saga("s", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3))
        before = await store.get("s")
        for i, bad in enumerate(UNSTORABLE):
            with pytest.raises(UnstorableValue):
                await store.create(new_saga(f"bad-{i}", input=bad))
            assert await store.load(f"bad-{i}") is None
            step = StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output=bad)
            done = Event(at=T0 + 1, type=EventType.STEP_SUCCEEDED, step="a")
            with pytest.raises(UnstorableValue):
                await store.commit("s", "e1", Change(steps=[step], events=[done]), T0 + 1)
        for text_change in (
            Change(SagaStatus.FAILED, error="boom \u0000"),
            Change(events=[Event(at=T0, type=EventType.STEP_FAILED, detail="\ud800")]),
            Change(steps=[StepRecord("a", Phase.FORWARD, StepStatus.FAILED, error="\u0000")]),
        ):
            with pytest.raises(UnstorableValue):
                await store.commit("s", "e1", text_change, T0 + 1)
        with pytest.raises(UnstorableValue):
            await store.create(new_saga("bad-key", key="k\u0000"))
        after = await store.get("s")
        assert (after.status, after.error, after.steps, after.history) == (
            before.status,
            before.error,
            before.steps,
            before.history,
        )
        assert (await store.list_sagas()).total == 1

    async def test_storable_look_alikes_round_trip(self, store: SagaStore) -> None:
        # A backslash followed by "u0000" is text, not a NUL character: stored as it is.
        value = {"text": "C:\\u0000dir", "escaped": "\\\\u0000", "key \\u0000": 0.5}
        await store.create(new_saga("s", input=value))
        assert (await store.get("s")).input == value

    async def test_an_unstorable_write_never_fails_concurrent_ones(self, store: SagaStore) -> None:
        # On PostgreSQL these share one group-commit batch: one bad value must not fail it.
        for i in range(4):
            await store.create(
                new_saga(f"s{i}", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
            )

        def change(output: Any) -> Change:
            step = StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output=output)
            return Change(steps=[step], events=[Event(at=T0 + 1, type=EventType.STEP_SUCCEEDED)])

        results = await asyncio.gather(
            store.commit("s0", "e1", change({"ok": 0}), T0 + 1),
            store.commit("s1", "e1", change(object()), T0 + 1),
            store.commit("s2", "e1", change({"ok": 2}), T0 + 1),
            store.create(new_saga("n0")),
            store.create(new_saga("n1", input=math.nan)),
            store.commit("s3", "e1", change("nul \u0000"), T0 + 1),
            store.create(new_saga("n2")),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == [
            "NoneType",
            "UnstorableValue",
            "NoneType",
            "tuple",
            "UnstorableValue",
            "UnstorableValue",
            "tuple",
        ]
        assert (await store.get("s0")).output("a") == {"ok": 0}
        assert (await store.get("s2")).output("a") == {"ok": 2}
        assert (await store.get("s1")).step("a") is None
        assert (await store.get("s3")).step("a") is None
        assert await store.load("n1") is None
        assert {r.id for r in (await store.list_sagas(limit=10)).items} == {
            "s0",
            "s1",
            "s2",
            "s3",
            "n0",
            "n2",
        }

    async def test_an_id_that_cannot_be_stored_names_no_saga(self, store: SagaStore) -> None:
        for saga_id in ("a\u0000b", "\ud800"):
            assert await store.load(saga_id) is None
            with pytest.raises(SagaNotFound):
                await store.get(saga_id, history=False)

    # -- cancels that take effect, or are refused --------------------------------------------

    async def _at_step(self, store: SagaStore, saga_id: str, *steps: str) -> None:
        """A RUNNING saga leased to e1 whose ``steps`` have started (the last one running)."""
        new = new_saga(saga_id, status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
        new.steps = [running(name) for name in steps]
        await store.create(new)

    async def test_request_cancel_until_a_step_refuses_once_it_started(
        self, store: SagaStore
    ) -> None:
        await self._at_step(store, "early", "a")
        await self._at_step(store, "late", "a", "b")
        ask = Event(at=T0 + 1, type=EventType.CANCEL_REQUESTED)
        accepted = await store.request_cancel("early", ask, T0 + 1, until="b")
        assert accepted.cancel_requested
        assert accepted.history[-1] == ask
        with pytest.raises(CancelRefused, match="'b'") as refused:
            await store.request_cancel("late", ask, T0 + 1, until="b")
        assert isinstance(refused.value, InvalidTransition)
        late = await store.get("late")
        assert late.cancel_requested is False
        assert late.history[-1] == Event(
            at=T0 + 1, type=EventType.CANCEL_REFUSED, detail=refused.value.reason
        )
        assert (late.status, late.step("b")) == (SagaStatus.RUNNING, running("b"))

    async def test_request_cancel_without_a_step_to_stop_at(self, store: SagaStore) -> None:
        # until=None: the caller cannot name a step a cancel can still stop before.
        await store.create(new_saga("queued"))
        await self._at_step(store, "started", "a")
        ask = Event(at=T0 + 1, type=EventType.CANCEL_REQUESTED)
        assert (await store.request_cancel("queued", ask, T0 + 1)).cancel_requested
        with pytest.raises(CancelRefused, match="steps have started"):
            await store.request_cancel("started", ask, T0 + 1)
        assert [e.type for e in (await store.get("started")).history][-1] is (
            EventType.CANCEL_REFUSED
        )

    async def test_request_cancel_refuses_compensating_and_finished_sagas(
        self, store: SagaStore
    ) -> None:
        await self._at_step(store, "s", "a")
        ask = Event(at=T0 + 1, type=EventType.CANCEL_REQUESTED)
        await store.commit("s", "e1", Change(SagaStatus.COMPENSATING, error="boom"), T0 + 1)
        with pytest.raises(CancelRefused, match="already compensating"):
            await store.request_cancel("s", ask, T0 + 2, until="z")
        await store.commit("s", "e1", Change(SagaStatus.COMPENSATED, release_lease=True), T0 + 3)
        with pytest.raises(CancelRefused, match="COMPENSATED"):
            await store.request_cancel("s", ask, T0 + 4, until="z")
        record = await store.get("s")
        refusals = [e for e in record.history if e.type is EventType.CANCEL_REFUSED]
        assert len(refusals) == 2
        assert (record.status, record.error, record.cancel_requested) == (
            SagaStatus.COMPENSATED,
            None,
            False,
        )

    async def test_request_cancel_twice_writes_once(self, store: SagaStore) -> None:
        await self._at_step(store, "s", "a")
        ask = Event(at=T0 + 1, type=EventType.CANCEL_REQUESTED)
        await store.request_cancel("s", ask, T0 + 1, until="b")
        again = await store.request_cancel("s", ask, T0 + 2, until="b")
        assert again.cancel_requested
        assert [e.type for e in again.history].count(EventType.CANCEL_REQUESTED) == 1

    async def test_a_change_unless_cancelled_is_fenced_by_a_cancel(self, store: SagaStore) -> None:
        await self._at_step(store, "s", "a")
        start_b = Change(
            steps=[running("b", at=T0 + 2)],
            events=[Event(at=T0 + 2, type=EventType.STEP_STARTED, step="b", attempt=1)],
            unless_cancelled=True,
        )
        ask = Event(at=T0 + 1, type=EventType.CANCEL_REQUESTED)
        await store.request_cancel("s", ask, T0 + 1, until="b")
        before = await store.get("s")
        with pytest.raises(CancelPending):
            await store.commit("s", "e1", start_b, T0 + 2)
        with pytest.raises(LeaseLost):  # the lease fence still comes first
            await store.commit("s", "other", start_b, T0 + 2)
        after = await store.get("s")
        assert (after.steps, after.history, after.updated_at) == (
            before.steps,
            before.history,
            before.updated_at,
        )
        # Without the flag the same change applies; and a change without the guard applies
        # whatever the flag says (compensation, a retry of a step already running).
        await self._at_step(store, "free", "a")
        await store.commit("free", "e1", start_b, T0 + 2)
        assert (await store.get("free")).step("b") == running("b", at=T0 + 2)
        start_b.unless_cancelled = False
        await store.commit("s", "e1", start_b, T0 + 3)
        assert (await store.get("s")).step("b") == running("b", at=T0 + 2)

    async def test_a_cancel_and_a_guarded_step_start_never_both_win(self, store: SagaStore) -> None:
        # Raced many times: exactly one of them wins each time, whichever it is.
        n = 24
        for i in range(n):
            await self._at_step(store, f"r{i}", "a")
        ask = Event(at=T0 + 1, type=EventType.CANCEL_REQUESTED)

        def start_b() -> Change:
            return Change(
                steps=[running("b", at=T0 + 1)],
                events=[Event(at=T0 + 1, type=EventType.STEP_STARTED, step="b", attempt=1)],
                unless_cancelled=True,
            )

        calls = []
        for i in range(n):
            cancel = store.request_cancel(f"r{i}", ask, T0 + 1, until="b")
            start = store.commit(f"r{i}", "e1", start_b(), T0 + 1)
            calls += [start, cancel] if i % 2 else [cancel, start]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for i in range(n):
            record = await store.get(f"r{i}")
            pair = results[2 * i : 2 * i + 2]
            kinds = sorted(type(r).__name__ for r in pair)
            if record.step("b") is None:
                assert kinds == ["CancelPending", "SagaRecord"], (i, pair)
                assert record.cancel_requested
            else:
                assert kinds == ["CancelRefused", "NoneType"], (i, pair)
                assert not record.cancel_requested
