"""The store contract, who drives a saga: claims (free and expired sagas, never one twice),
``acquire``, lease renewal, and cancels that take effect or are refused, atomically with the
step starts they race. Part of ``SagaStoreContract``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagaway.errors import (
    CancelPending,
    CancelRefused,
    InvalidTransition,
    LeaseLost,
    SagaNotFound,
)
from sagaway.state import (
    Change,
    Event,
    EventType,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store.base import SagaStore
from sagaway.testing.contract_data import DEF, LEASE, T0, new_saga, running

__all__ = ["OwnershipContract"]


class OwnershipContract:
    """Leases, claims and cancels."""

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
