"""Engine hooks: what is called when, a raising hook never breaks a saga, none costs nothing."""

from typing import Any

import pytest
from sagakit import Kit, Order

from compiled_build import interpreted_only
from sagaway import Change, Phase, SagaRecord, SagaStatus, StepContext
from sagaway.hooks import ClaimReason, Hook, HookChain, StepOutcome
from sagaway.runner import SagaRun
from sagaway.store.memory import MemoryStore
from sagaway.testing import saga_engine


class Recorder(Hook):
    """Writes every call down as a tuple, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def saga_started(self, record: SagaRecord) -> None:
        self.calls.append(("started", record.status))

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        self.calls.append(("claim", reason))

    def before_step(self, record: SagaRecord, ctx: StepContext) -> None:
        self.calls.append(("before", ctx.step, ctx.phase, ctx.attempt))

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        assert seconds >= 0
        self.calls.append(("after", ctx.step, ctx.phase, ctx.attempt, outcome, error))

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(("commit", change.status))

    def on_finish(self, record: SagaRecord) -> None:
        self.calls.append(("finish", record.status))

    def on_release(self, record: SagaRecord, reason: str) -> None:
        self.calls.append(("release", reason))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


async def test_a_succeeding_saga_calls_each_hook_in_order(kit: Kit, order: Order) -> None:
    rec = Recorder()
    async with saga_engine(kit.saga, hooks=[rec]) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    F = Phase.FORWARD
    ok = StepOutcome.SUCCEEDED
    assert [c for c in rec.calls if c[0] != "commit"] == [
        ("started", SagaStatus.RUNNING),
        ("claim", ClaimReason.STARTED),
        ("before", "a", F, 1),
        ("after", "a", F, 1, ok, None),
        ("before", "b", F, 1),
        ("after", "b", F, 1, ok, None),
        ("before", "c", F, 1),
        ("after", "c", F, 1, ok, None),
        ("finish", SagaStatus.SUCCEEDED),
    ]
    # Step 0 is written with the saga; then b, c (each with the previous outcome), the end.
    assert rec.of("commit") == [
        ("commit", None),
        ("commit", None),
        ("commit", SagaStatus.SUCCEEDED),
    ]


async def test_retries_failures_and_compensations_reach_the_hooks(kit: Kit, order: Order) -> None:
    kit.faults.fail("b", times=1)  # transient: retried
    kit.faults.reject("c", "Insufficient funds")
    rec = Recorder()
    async with saga_engine(kit.saga, hooks=[rec]) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.COMPENSATED
    F, C = Phase.FORWARD, Phase.COMPENSATION
    assert rec.of("after") == [
        ("after", "a", F, 1, StepOutcome.SUCCEEDED, None),
        (
            "after",
            "b",
            F,
            1,
            StepOutcome.RETRYING,
            "ConnectionError: injected fault in b (forward, attempt 1)",
        ),
        ("after", "b", F, 2, StepOutcome.SUCCEEDED, None),
        ("after", "c", F, 1, StepOutcome.FAILED, "Insufficient funds"),
        ("after", "b", C, 1, StepOutcome.SUCCEEDED, None),
        ("after", "a", C, 1, StepOutcome.SUCCEEDED, None),
    ]
    assert ("commit", SagaStatus.COMPENSATING) in rec.calls
    assert rec.calls[-1] == ("finish", SagaStatus.COMPENSATED)


async def test_operator_retry_is_a_claim_with_its_reason(kit: Kit, order: Order) -> None:
    kit.faults.fail("a", times=None, phase=Phase.COMPENSATION)
    kit.faults.reject("c", "no")
    rec = Recorder()
    async with saga_engine(kit.saga, hooks=[rec]) as h:
        record = await h.run(kit.saga, order)
        assert record.status is SagaStatus.FAILED
        assert rec.calls[-1] == ("finish", SagaStatus.FAILED)
        kit.faults.clear()
        await h.engine.retry(record.id)
        assert (await h.wait(record.id)).status is SagaStatus.COMPENSATED
    assert ("claim", ClaimReason.RETRIED) in rec.calls
    assert rec.calls[-1] == ("finish", SagaStatus.COMPENSATED)


async def test_a_saga_left_unfinished_is_released(kit: Kit, order: Order) -> None:
    hang = kit.faults.hang("b")
    rec = Recorder()
    store = MemoryStore()
    async with saga_engine(kit.saga, hooks=[rec], store=store) as h:
        await h.start(kit.saga, order)
        await hang.entered.wait()
    hang.release()
    assert rec.of("after")[-1][1:] == ("b", Phase.FORWARD, 1, StepOutcome.FAILED, "cancelled")
    assert rec.of("release") == [("release", "engine closing")]
    assert rec.of("finish") == []


class Broken(Hook):
    def before_step(self, record: SagaRecord, ctx: StepContext) -> None:
        raise RuntimeError("hook bug")

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        raise RuntimeError("hook bug")

    def on_finish(self, record: SagaRecord) -> None:
        raise RuntimeError("hook bug")


async def test_a_raising_hook_is_logged_and_the_saga_and_later_hooks_go_on(
    kit: Kit, order: Order, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    async with saga_engine(kit.saga, hooks=[Broken(), rec]) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    assert kit.trace == ["do:a", "do:b", "do:c"]
    assert len(rec.of("before")) == 3, "the hook after the broken one still runs"
    assert rec.calls[-1] == ("finish", SagaStatus.SUCCEEDED)
    failures = [r for r in caplog.records if r.name == "sagaway.hooks"]
    assert len(failures) == 3 + 3 + 1  # before_step x3, after_commit x3, on_finish
    assert "Broken.before_step" in failures[0].getMessage()


class BrokenSteps(Hook):
    """The only hook of after_step and after_commit: the chain calls it without its loop."""

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        raise RuntimeError("hook bug")

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        raise RuntimeError("hook bug")


async def test_the_only_hook_of_a_method_is_guarded_too(
    kit: Kit, order: Order, caplog: pytest.LogCaptureFixture
) -> None:
    async with saga_engine(kit.saga, hooks=[BrokenSteps()]) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    failures = [r.getMessage() for r in caplog.records if r.name == "sagaway.hooks"]
    assert sum("BrokenSteps.after_step" in m for m in failures) == 3
    assert sum("BrokenSteps.after_commit" in m for m in failures) >= 3


async def test_a_method_no_hook_overrides_is_not_called(
    kit: Kit, order: Order, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The metrics hook reads no before_step: the runner calls nothing for it.
    called: list[object] = []
    monkeypatch.setattr(HookChain, "before_step", lambda self, *args: called.append(args))
    rec = Recorder()
    monkeypatch.setattr(Recorder, "before_step", Hook.before_step)
    async with saga_engine(kit.saga, hooks=[rec]) as h:
        record = await h.run(kit.saga, order)
    assert record.status is SagaStatus.SUCCEEDED
    assert called == []
    assert len(rec.of("after")) == 3, "after_step still reaches the hook"


@interpreted_only  # replaces Engine._drive on the instance
async def test_no_hook_means_the_runner_gets_none(kit: Kit, order: Order) -> None:
    seen: list[SagaRun] = []
    async with saga_engine(kit.saga) as h:
        original = h.engine._drive

        async def spy(run: SagaRun) -> None:
            seen.append(run)
            await original(run)

        h.engine._drive = spy  # type: ignore[method-assign]
        await h.run(kit.saga, order)
        assert h.engine.hooks == ()
    assert [run.hooks for run in seen] == [None]


async def test_hook_added_later_sees_sagas_started_after(kit: Kit, order: Order) -> None:
    rec = Recorder()
    async with saga_engine(kit.saga) as h:
        await h.run(kit.saga, order)
        h.engine.add_hook(rec)
        await h.run(kit.saga, order)
    assert h.engine.hooks == (rec,)
    assert rec.of("finish") == [("finish", SagaStatus.SUCCEEDED)]


async def test_an_api_only_engine_reports_the_start_and_a_worker_the_claim(
    kit: Kit, order: Order
) -> None:
    api, worker = Recorder(), Recorder()
    store = MemoryStore()
    async with saga_engine(kit.saga, store=store, hooks=[api], execute=False) as a:
        saga_id = await a.start(kit.saga, order)
    async with saga_engine(kit.saga, store=store, hooks=[worker], owner_id="w") as w:
        record = await w.wait(saga_id)
    assert record.status is SagaStatus.SUCCEEDED
    assert api.calls == [("started", SagaStatus.PENDING)]
    assert worker.calls[0] == ("claim", ClaimReason.RECOVERED)
    assert worker.calls[-1] == ("finish", SagaStatus.SUCCEEDED)
