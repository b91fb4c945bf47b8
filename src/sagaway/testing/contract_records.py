"""The store contract, what a store records: creates and idempotency keys, commits (the whole
change or nothing), loads, lists and counts, values round-tripping exactly, and the values no
store can keep refused before anything is written. Part of ``SagaStoreContract``."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from sagaway.errors import (
    LeaseLost,
    SagaNotFound,
    UnstorableValue,
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
from sagaway.testing.contract_data import DEF, LEASE, T0, UNSTORABLE, new_saga, running

__all__ = ["RecordsContract"]


class RecordsContract:
    """Creating, committing, reading and listing sagas, and the values they carry."""

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
