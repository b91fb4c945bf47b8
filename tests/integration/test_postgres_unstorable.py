"""Issue 8, item 2: on PostgreSQL one saga's unstorable value never touches another saga.

Concurrent sagas' transitions share group-commit batches. Before the fix, a step result the log
could not encode failed the whole batch: every saga in it lost its commit, was resumed from the
log and ran its step again (20 sagas ran 40 steps). Values are now checked before they are
queued, and a batch the driver or PostgreSQL refuses is retried one operation at a time.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from batching import in_one_batch
from sagaway import Engine, Saga, SagaStatus, StepContext
from sagaway.state import Change, Event, EventType, NewSaga, Phase, StepRecord, StepStatus
from sagaway.store import postgres as pg_module
from sagaway.store.postgres import PostgresStore
from servers import drop_pg_schema, pg_schema_url, postgres_check, require_server, unique_pg_schema

N = 20


@pytest.fixture
async def url() -> AsyncIterator[str]:
    require_server("postgresql", postgres_check)
    schema = unique_pg_schema("unstorable")
    try:
        yield pg_schema_url(schema)
    finally:
        await drop_pg_schema(schema)


@pytest.mark.parametrize("bad", [object(), math.nan, "nul \u0000"], ids=["object", "nan", "nul"])
async def test_one_unstorable_result_never_repeats_other_sagas_steps(url: str, bad: Any) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    # Every saga reaches its second step before any finishes it, so their transitions share
    # batches: the first N arrivals wait at this barrier.
    arrived = asyncio.Event()
    waiting = 0
    saga = Saga("pg-unstorable")

    @saga.step
    async def first(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        calls[(ctx.saga_id, "first")] += 1
        return {"n": data["n"]}

    @saga.step
    async def second(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        nonlocal waiting
        calls[(ctx.saga_id, "second")] += 1
        waiting += 1
        if waiting == N:
            arrived.set()
        await arrived.wait()
        return bad if data["n"] == 7 else {"ok": data["n"]}

    @second.compensation
    async def undo_second(ctx: StepContext, data, output):  # type: ignore[no-untyped-def]
        calls[(ctx.saga_id, "undo_second")] += 1

    @saga.step
    async def third(ctx: StepContext, data):  # type: ignore[no-untyped-def]
        calls[(ctx.saga_id, "third")] += 1
        return data["n"]

    async with Engine(PostgresStore(url), sagas=[saga], recovery_interval=0.05) as engine:
        ids = [await engine.start(saga, {"n": n}) for n in range(N)]
        records = [await engine.wait(i, timeout=30) for i in ids]
        await engine.recover(include_own=True)  # nothing is left to resume
        records = [await engine.wait(i, timeout=30) for i in ids]
        assert engine.store.stats.batches < engine.store.stats.operations  # batches were shared
    statuses = Counter(r.status for r in records)
    assert statuses == {SagaStatus.SUCCEEDED: N - 1, SagaStatus.COMPENSATED: 1}
    bad_id = ids[7]
    for saga_id in ids:
        expected = {"first": 1, "second": 1}
        expected.update({"undo_second": 1} if saga_id == bad_id else {"third": 1})
        got = {step: n for (sid, step), n in calls.items() if sid == saga_id}
        assert got == expected, (saga_id == bad_id, got)
    failed = records[7].error or ""
    assert "second" in failed
    assert "cannot store" in failed


async def test_a_batch_the_driver_refuses_fails_only_the_culprit(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second line of defence: a value that slipped past the check before queueing (here
    # the check is switched off) fails its own write, and the rest of its batch commits.
    monkeypatch.setattr(pg_module, "check_change", lambda change: None)
    async with PostgresStore(url) as store:
        for i in range(6):
            await store.create(
                NewSaga(
                    id=f"s{i}",
                    name="d",
                    version=1,
                    input={},
                    at=1.0,
                    status=SagaStatus.RUNNING,
                    owner="e1",
                    lease_expires_at=1e9,
                )
            )

        def change(output: Any) -> Change:
            row = StepRecord("a", Phase.FORWARD, StepStatus.SUCCEEDED, 1, output=output)
            return Change(steps=[row], events=[Event(at=2.0, type=EventType.STEP_SUCCEEDED)])

        outputs: list[Any] = [1, object(), 2, math.nan, "nul \u0000", 3]
        results = await in_one_batch(  # one batch held all six, for certain
            store, *(store.commit(f"s{i}", "e1", change(v), 2.0) for i, v in enumerate(outputs))
        )
        assert [type(r).__name__ for r in results] == [
            "NoneType",
            "UnstorableValue",
            "NoneType",
            "UnstorableValue",
            "UnstorableValue",
            "NoneType",
        ]
        for i, expected in ((0, 1), (2, 2), (5, 3)):
            assert (await store.get(f"s{i}")).output("a") == expected
        for i in (1, 3, 4):
            assert (await store.get(f"s{i}")).step("a") is None
