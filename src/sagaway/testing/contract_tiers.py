"""The contracts of the store capability tiers, one test class per tier (see
``sagaway.store.base``): ``OutboxStoreContract`` for ``OutboxStore``,
``TransactionalStoreContract`` for ``TransactionalStore``.

A backend's test module subclasses ``SagaStoreContract`` and the class of every tier it
implements, with the same ``store`` fixture::

    class TestMyStore(SagaStoreContract, OutboxStoreContract):
        ...
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagaway.errors import (
    CancelPending,
    EffectFailed,
    EffectRefused,
    LeaseLost,
    SagaNotFound,
    StepFailed,
    UnstorableValue,
)
from sagaway.state import (
    Change,
    Event,
    EventType,
    OutboxMessage,
    Park,
    Phase,
    SagaStatus,
    StepRecord,
    StepStatus,
)
from sagaway.store.base import OutboxStore, SagaStore, TransactionalStore
from sagaway.testing.contract import T0, new_saga, running

__all__ = ["OutboxStoreContract", "TransactionalStoreContract"]


def message(
    message_id: str,
    saga_id: str = "s",
    *,
    at: float = T0,
    topic: str = "inventory.reserve",
    body: Any = None,
) -> OutboxMessage:
    return OutboxMessage(
        id=message_id,
        saga_id=saga_id,
        topic=topic,
        body={"command": "reserve", "items": [1, 2], "id": message_id} if body is None else body,
        created_at=at,
        headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
    )


async def _leased(store: SagaStore, *ids: str) -> None:
    for saga_id in ids:
        await store.create(
            new_saga(saga_id, status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
        )


class OutboxStoreContract:
    """What ``OutboxStore`` promises: messages written with the transition, or not at all."""

    async def test_commit_writes_the_outbox_with_the_transition(self, store: OutboxStore) -> None:
        assert isinstance(store, OutboxStore)
        await _leased(store, "s")
        assert (await store.outbox_count(), await store.outbox_pending(limit=10)) == (0, [])
        out = (
            message("s:a:forward#1", body={"unicode": "Zoë ✓ 🚀", "nested": {"n": None}}),
            message("s:b:forward#1", topic="payment.start", body="text body"),
        )
        change = Change(
            steps=[running("a", at=T0 + 1)],
            events=[Event(at=T0 + 1, type=EventType.STEP_STARTED, step="a", attempt=1)],
            outbox=out,
            park=Park("reply:inventory.reserve", T0 + 31),
        )
        await store.commit("s", "e1", change, T0 + 1)
        assert await store.outbox_count() == 2
        assert await store.outbox_pending(limit=10) == list(out)
        record = await store.get("s")
        assert record.step("a") == running("a", at=T0 + 1)
        assert record.waiting_for == "reply:inventory.reserve"

    async def test_a_failed_commit_writes_no_outbox_message(self, store: OutboxStore) -> None:
        await _leased(store, "s")
        change = Change(steps=[running("a")], outbox=(message("m1"),))
        with pytest.raises(LeaseLost):
            await store.commit("s", "intruder", change, T0 + 1)
        with pytest.raises(SagaNotFound):
            await store.commit("missing", "e1", change, T0 + 1)
        bad_output = StepRecord("z", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output=object())
        with pytest.raises(UnstorableValue):
            await store.commit(
                "s", "e1", Change(steps=[bad_output], outbox=(message("m2"),)), T0 + 1
            )
        # A message the log cannot store fails its whole transition, even one the runner
        # already checked (``checked`` covers step values, not messages).
        for bad in (message("m3", body={"x": object()}), message("m\u0000")):
            with pytest.raises(UnstorableValue):
                await store.commit(
                    "s", "e1", Change(steps=[running("a")], outbox=(bad,), checked=True), T0 + 1
                )
        await store.request_cancel("s", Event(at=T0, type=EventType.CANCEL_REQUESTED), T0)
        change.unless_cancelled = True
        with pytest.raises(CancelPending):
            await store.commit("s", "e1", change, T0 + 1)
        assert await store.outbox_count() == 0
        assert await store.outbox_pending(limit=10) == []
        assert (await store.get("s")).steps == {}

    async def test_concurrent_commits_keep_their_own_messages(self, store: OutboxStore) -> None:
        # SQLite and PostgreSQL write these in one group commit: a transition that fails
        # there must take its messages with it and leave the others' in.
        await _leased(store, "s0", "s1", "s2", "s3")

        def change(saga_id: str, **extra: Any) -> Change:
            return Change(steps=[running("a")], outbox=(message(f"{saga_id}#1", saga_id),), **extra)

        results = await asyncio.gather(
            store.commit("s0", "e1", change("s0"), T0 + 1),
            store.commit("s1", "intruder", change("s1"), T0 + 1),
            store.commit("s2", "e1", change("s2"), T0 + 1),
            store.commit("nope", "e1", change("nope"), T0 + 1),
            store.commit("s3", "e1", change("s3", error="\u0000"), T0 + 1),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == [
            "NoneType",
            "LeaseLost",
            "NoneType",
            "SagaNotFound",
            "UnstorableValue",
        ]
        assert [m.id for m in await store.outbox_pending(limit=10)] == ["s0#1", "s2#1"]

    async def test_pending_oldest_first_with_limit_and_age(self, store: OutboxStore) -> None:
        await _leased(store, "s", "t")
        await store.commit("s", "e1", Change(outbox=(message("b", at=T0 + 2),)), T0 + 2)
        await store.commit(
            "t",
            "e1",
            Change(outbox=(message("c", "t", at=T0 + 3), message("a", "t", at=T0 + 2))),
            T0 + 3,
        )
        await store.commit("s", "e1", Change(outbox=(message("z", at=T0 + 1),)), T0 + 3)
        pending = await store.outbox_pending(limit=10)
        assert [m.id for m in pending] == ["z", "a", "b", "c"]  # created_at, then id
        assert [m.saga_id for m in pending] == ["s", "t", "s", "t"]
        assert [m.id for m in await store.outbox_pending(limit=2)] == ["z", "a"]
        assert await store.outbox_pending(limit=0) == []
        older = await store.outbox_pending(limit=10, older_than=T0 + 3)
        assert [m.id for m in older] == ["z", "a", "b"]  # strictly older
        assert await store.outbox_pending(limit=10, older_than=T0 + 1) == []

    async def test_delete_what_was_published(self, store: OutboxStore) -> None:
        await _leased(store, "s")
        out = tuple(message(f"m{i}", at=T0 + i) for i in range(4))
        await store.commit("s", "e1", Change(outbox=out), T0 + 1)
        assert await store.outbox_delete(["m1", "m3", "unknown"]) == 2
        assert [m.id for m in await store.outbox_pending(limit=10)] == ["m0", "m2"]
        assert await store.outbox_count() == 2
        assert await store.outbox_delete([]) == 0
        assert await store.outbox_delete(["m1"]) == 0  # twice: nothing left to delete
        assert await store.outbox_delete(("m0", "m2")) == 2
        assert await store.outbox_count() == 0

    async def test_a_message_written_again_replaces_the_pending_one(
        self, store: OutboxStore
    ) -> None:
        await _leased(store, "s")
        await store.commit("s", "e1", Change(outbox=(message("m", body={"v": 1}),)), T0 + 1)
        again = message("m", at=T0 + 5, body={"v": 2})
        await store.commit("s", "e1", Change(outbox=(again,)), T0 + 5)
        assert await store.outbox_pending(limit=10) == [again]
        assert await store.outbox_count() == 1

    async def test_outbox_survives_the_saga_finishing(self, store: OutboxStore) -> None:
        # The terminal transition may be what sends the last message (a compensation's
        # command, an event): finishing the saga must not drop it.
        await _leased(store, "s")
        done = Change(SagaStatus.SUCCEEDED, release_lease=True, outbox=(message("final"),))
        await store.commit("s", "e1", done, T0 + 1)
        assert [m.id for m in await store.outbox_pending(limit=10)] == ["final"]
        assert (await store.get("s")).status is SagaStatus.SUCCEEDED


class TransactionalStoreContract:
    """What ``TransactionalStore`` promises: application writes in the log's transactions."""

    async def test_run_in_transaction_returns_the_result(self, store: TransactionalStore) -> None:
        assert isinstance(store, TransactionalStore)
        assert await store.run_in_transaction(lambda conn: ("done", 42)) == ("done", 42)

        class Refused(Exception):
            pass

        def fail(conn: Any) -> None:
            raise Refused("business rule")

        with pytest.raises(Refused, match="business rule"):
            await store.run_in_transaction(fail)
        assert store.shares_database("postgresql://elsewhere/db") is False

    async def test_a_failing_effect_fails_its_transition(self, store: TransactionalStore) -> None:
        await _leased(store, "s")
        seen: list[Any] = []

        def effect(conn: Any) -> None:
            seen.append(conn)
            raise ValueError("constraint violated")

        change = Change(
            SagaStatus.SUCCEEDED,
            steps=[running("a")],
            events=[Event(at=T0 + 1, type=EventType.SAGA_SUCCEEDED)],
            effects=(effect,),
            outbox=(message("m"),) if isinstance(store, OutboxStore) else (),
        )
        with pytest.raises(EffectFailed, match="constraint violated"):
            await store.commit("s", "e1", change, T0 + 1)
        assert len(seen) >= 1
        record = await store.get("s")
        assert (record.status, record.steps, len(record.history)) == (SagaStatus.RUNNING, {}, 1)
        if isinstance(store, OutboxStore):
            assert await store.outbox_count() == 0
        ran: list[int] = []
        change.effects = (lambda conn: ran.append(1),)
        await store.commit("s", "e1", change, T0 + 2)
        assert ran == [1]
        assert (await store.get("s")).status is SagaStatus.SUCCEEDED

    async def test_a_refusing_effect_is_a_refusal(self, store: TransactionalStore) -> None:
        """An effect raising ``StepFailed`` fails its transition as ``EffectRefused`` (the
        reason kept), not ``EffectFailed``: nothing of the change is written."""
        await _leased(store, "s")

        def refuse(conn: Any) -> None:
            raise StepFailed("Insufficient funds")

        change = Change(
            SagaStatus.SUCCEEDED,
            steps=[running("a")],
            events=[Event(at=T0 + 1, type=EventType.SAGA_SUCCEEDED)],
            effects=(refuse,),
        )
        with pytest.raises(EffectRefused) as refused:
            await store.commit("s", "e1", change, T0 + 1)
        assert refused.value.reason == "Insufficient funds"
        assert not isinstance(refused.value, EffectFailed)
        record = await store.get("s")
        assert (record.status, record.steps, len(record.history)) == (SagaStatus.RUNNING, {}, 1)

    async def test_create_with_stores_what_prepare_returns(self, store: TransactionalStore) -> None:
        seen: list[Any] = []

        def prepare(conn: Any) -> Any:
            seen.append(conn)
            return {"order": "o-1", "lines": [1, 2]}

        first = new_saga("s1", key="k", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
        first.input = None
        assert await store.create_with(first, prepare) == ("s1", True)
        assert (await store.get("s1")).input == {"order": "o-1", "lines": [1, 2]}
        assert len(seen) >= 1
        # The key used: nothing written, whatever prepare returned (if it ran at all).
        again = new_saga("s2", key="k", status=SagaStatus.RUNNING, owner="e1", lease_until=2e3)
        assert await store.create_with(again, lambda conn: {"order": "other"}) == ("s1", False)
        assert await store.load("s2") is None
        assert (await store.get("s1")).input == {"order": "o-1", "lines": [1, 2]}

    async def test_create_with_writes_nothing_when_prepare_raises(
        self, store: TransactionalStore
    ) -> None:
        class Refused(Exception):
            pass

        def refuse(conn: Any) -> Any:
            raise Refused("business rule")

        with pytest.raises(Refused, match="business rule"):
            await store.create_with(new_saga("s", key="k"), refuse)
        assert await store.load("s") is None
        # Neither the id nor the key was taken.
        assert await store.create_with(new_saga("s", key="k"), lambda conn: 1) == ("s", True)
