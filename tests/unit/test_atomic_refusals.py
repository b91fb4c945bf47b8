"""A ``ctx.atomic()`` write that raises ``StepFailed``: a refusal, not a broken write.

The transition that carried it and every write it carried are not recorded, and the step fails
with the refusal's reason exactly as if its action had raised it (earlier steps compensated);
any other exception still stops the saga FAILED (``test_atomic_effects``). On both stores that
run such writes: SQLite (the writes are rows in the log's file) and memory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sagaway import (
    Engine,
    RetryPolicy,
    Saga,
    SagaRecord,
    SagaStatus,
    StepContext,
    StepFailed,
    StepStatus,
)
from sagaway.hooks import Hook, StepOutcome
from sagaway.metrics import PrometheusHook
from sagaway.store.memory import MemoryStore
from sagaway.store.sqlite import SQLiteStore
from sagaway.testing import VirtualClock

FAST = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.001)


class Ledger:
    """Where the steps' writes land: a table in the log's file on SQLite, a list on memory
    (whose writes get ``None`` and cannot be undone: a refusal there comes before writing)."""

    def __init__(self, path: Path | None) -> None:
        self.path, self.kept = path, list[str]()

    def write(self, conn: sqlite3.Connection | None, key: str) -> None:
        if conn is None:
            self.kept.append(key)
        else:
            conn.execute("INSERT INTO ledger VALUES (?)", (key,))

    def rows(self) -> list[str]:
        if self.path is None:
            return self.kept
        with sqlite3.connect(self.path) as conn:
            return [row[0] for row in conn.execute("SELECT key FROM ledger ORDER BY rowid")]


@pytest.fixture(params=["memory", "sqlite"])
async def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Engine, Ledger]]:
    if request.param == "memory":
        async with Engine(MemoryStore(), clock=VirtualClock(auto_advance=True)) as engine:
            yield engine, Ledger(None)
        return
    path = tmp_path / "log.db"
    store = SQLiteStore(f"sqlite:///{path}")
    async with Engine(store) as engine:
        await store.run_in_transaction(
            lambda conn: conn.execute("CREATE TABLE ledger (key TEXT PRIMARY KEY)")
        )
        yield engine, Ledger(path)


def _saga(ledger: Ledger, refuse: str, *, in_action: bool = False, undo_refusals: int = 0) -> Saga:
    """reserve -> charge -> ship, each writing its key with ``ctx.atomic()``; ``refuse`` (a
    step's name) refuses inside its write (or, ``in_action``, raises in the action: the
    reference the refusal must look like); compensations write their own key, the first
    ``undo_refusals`` attempts of ``reserve``'s refused inside the write."""
    saga = Saga("refusals", version=2 if in_action else 1)

    def step(name: str) -> None:
        async def action(ctx: StepContext, order: int) -> str:
            if name == refuse and in_action:
                raise StepFailed(f"{name}: refused")

            def write(conn: Any) -> None:
                if name == refuse:
                    if conn is not None:  # written, then refused: the refusal undoes it
                        ledger.write(conn, ctx.idempotency_key)
                    raise StepFailed(f"{name}: refused")
                ledger.write(conn, ctx.idempotency_key)

            ctx.atomic(write)
            return f"{name}-{order}"

        async def undo(ctx: StepContext, order: int, output: str | None) -> None:
            def write(conn: Any) -> None:
                if name == "reserve" and ctx.attempt <= undo_refusals:
                    raise StepFailed("not yet")
                ledger.write(conn, ctx.idempotency_key)

            ctx.atomic(write)

        action.__name__ = name
        saga.step(compensation_retry=FAST)(action).compensation(undo)

    for name in ("reserve", "charge", "ship"):
        step(name)
    return saga


async def _run(engine: Engine, saga: Saga) -> SagaRecord:
    saga_id = await engine.start(saga, 7)
    await engine.wait(saga_id, timeout=10)
    return await engine.get(saga_id)


def _timeline(record: SagaRecord) -> list[tuple[Any, ...]]:
    return [(e.type, e.step, e.phase, e.attempt, e.detail) for e in record.history]


@pytest.mark.parametrize("refuse", ["charge", "ship"])
async def test_a_refused_write_fails_the_step_as_its_action_raising_would(
    setup: tuple[Engine, Ledger], refuse: str
) -> None:
    """``charge``: the refused change also started ``ship``; ``ship``: the last step, whose
    refused change would have finished the saga SUCCEEDED."""
    engine, ledger = setup
    refused = await _run(engine, _saga(ledger, refuse))
    reference = await _run(engine, _saga(ledger, refuse, in_action=True))

    assert refused.status is SagaStatus.COMPENSATED
    assert refused.error == f"{refuse}: refused"
    row = refused.steps[(refuse, "forward")]
    assert (row.status, row.error, row.output, row.attempts) == (
        StepStatus.FAILED,
        f"{refuse}: refused",
        None,
        1,
    )
    assert ("ship", "forward") in refused.steps or refuse == "charge"
    if refuse == "charge":
        assert ("ship", "forward") not in refused.steps  # its start went with the refusal
    # The same timeline, rows and outcome as the action raising StepFailed (times aside).
    assert _timeline(refused) == _timeline(reference)
    assert {k: (r.status, r.error, r.output) for k, r in refused.steps.items()} == {
        k: (r.status, r.error, r.output) for k, r in reference.steps.items()
    }
    # Nothing of the refused step written; the earlier ones written once and compensated.
    done = [n for n in ("reserve", "charge") if n != refuse]
    expected: list[str] = []
    for saga_id in (refused.id, reference.id):
        expected += [f"{saga_id}:{n}:forward" for n in done]
        expected += [f"{saga_id}:{n}:compensation" for n in reversed(done)]
    assert ledger.rows() == expected


async def test_a_refused_compensation_write_is_retried_as_a_failing_compensation(
    setup: tuple[Engine, Ledger],
) -> None:
    engine, ledger = setup
    record = await _run(engine, _saga(ledger, "ship", undo_refusals=2))
    assert record.status is SagaStatus.COMPENSATED
    undo = record.steps[("reserve", "compensation")]
    assert (undo.status, undo.attempts) == (StepStatus.COMPENSATED, 3)
    retries = [e.detail for e in record.history if e.type == "compensation_retrying"]
    assert retries == ["not yet", "not yet"]
    assert ledger.rows() == [
        f"{record.id}:reserve:forward",
        f"{record.id}:charge:forward",
        f"{record.id}:charge:compensation",
        f"{record.id}:reserve:compensation",
    ]


async def test_a_compensation_refused_past_its_retries_stops_the_saga_failed(
    setup: tuple[Engine, Ledger],
) -> None:
    engine, ledger = setup
    record = await _run(engine, _saga(ledger, "ship", undo_refusals=3))
    assert record.status is SagaStatus.FAILED
    assert record.error == "compensation of reserve failed: not yet"
    assert record.steps[("reserve", "compensation")].status is StepStatus.FAILED
    assert f"{record.id}:reserve:compensation" not in ledger.rows()


class Attempts(Hook):
    """Each attempt's ``before_step`` / ``after_step``, with the context object it came with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int, int, str | None]] = []

    def before_step(self, record: SagaRecord, ctx: StepContext) -> None:
        self.calls.append(("before", ctx.step, ctx.phase.value, ctx.attempt, id(ctx), None))

    def after_step(
        self,
        record: SagaRecord,
        ctx: StepContext,
        outcome: StepOutcome,
        error: str | None,
        seconds: float,
    ) -> None:
        what = outcome.value
        self.calls.append(("after", ctx.step, ctx.phase.value, ctx.attempt, id(ctx), what))


def _ended(calls: list[tuple[str, str, str, int, int, str | None]]) -> list[tuple[Any, ...]]:
    """Each attempt once: its step, phase and outcome, in order, after checking that every
    ``before_step`` has exactly one ``after_step`` with the same context."""
    open_: dict[int, tuple[str, str, int]] = {}
    ended: list[tuple[Any, ...]] = []
    for kind, step, phase, attempt, ctx, outcome in calls:
        if kind == "before":
            open_[ctx] = (step, phase, attempt)
        else:
            assert open_.pop(ctx) == (step, phase, attempt)
            ended.append((step, phase, outcome))
    assert open_ == {}
    return ended


async def test_the_hooks_hear_of_an_attempt_once_with_the_outcome_recorded(
    setup: tuple[Engine, Ledger],
) -> None:
    """A step whose writes ride its transition succeeded only once they commit: a refused
    one is told FAILED (a compensation's refusal RETRYING), never SUCCEEDED first."""
    engine, ledger = setup
    hook = Attempts()
    engine.add_hook(hook)
    record = await _run(engine, _saga(ledger, "ship", undo_refusals=1))
    assert record.status is SagaStatus.COMPENSATED
    assert _ended(hook.calls) == [
        ("reserve", "forward", "succeeded"),
        ("charge", "forward", "succeeded"),
        ("ship", "forward", "failed"),
        ("charge", "compensation", "succeeded"),
        ("reserve", "compensation", "retrying"),
        ("reserve", "compensation", "succeeded"),
    ]


async def test_the_metrics_count_a_refused_attempt_as_failed_only(
    setup: tuple[Engine, Ledger],
) -> None:
    engine, ledger = setup
    registry = CollectorRegistry()
    engine.add_hook(PrometheusHook(registry))
    await _run(engine, _saga(ledger, "charge"))

    def attempts(step: str, phase: str, outcome: str) -> float | None:
        labels = {"saga": "refusals", "step": step, "phase": phase, "outcome": outcome}
        return registry.get_sample_value("sagaway_step_duration_seconds_count", labels)

    assert attempts("reserve", "forward", "succeeded") == 1
    assert attempts("charge", "forward", "failed") == 1
    assert attempts("charge", "forward", "succeeded") is None
    assert attempts("reserve", "compensation", "succeeded") == 1
