"""ctx.atomic(): writes that commit in the same transaction as the step's outcome."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sagaway import Engine, Saga, SagaStatus, StepContext, StepStatus
from sagaway.store.memory import MemoryStore
from sagaway.store.sqlite import SQLiteStore
from sagaway.testing import VirtualClock


def _saga(writes: list[str], fail_in: str = "") -> Saga:
    saga = Saga("atomic", version=1)

    @saga.step
    async def first(ctx: StepContext, order: int) -> int:
        ctx.atomic(lambda conn: writes.append(ctx.idempotency_key))
        return order

    @saga.step
    async def second(ctx: StepContext, order: int) -> int:
        def write(conn: Any) -> None:
            if fail_in == "second" and ctx.attempt == 1:
                raise ValueError("constraint violated")
            writes.append(ctx.idempotency_key)

        ctx.atomic(write)
        return order

    return saga


async def test_atomic_writes_commit_with_the_step_outcome() -> None:
    writes: list[str] = []
    saga = _saga(writes)
    async with Engine(MemoryStore(), clock=VirtualClock(auto_advance=True)) as engine:
        record = await engine.wait(await engine.start(saga, 7), timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert writes == [f"{record.id}:first:forward", f"{record.id}:second:forward"]


async def test_a_failing_atomic_write_stops_the_saga_failed_and_retry_reruns_the_step() -> None:
    writes: list[str] = []
    saga = _saga(writes, fail_in="second")
    async with Engine(MemoryStore(), clock=VirtualClock(auto_advance=True)) as engine:
        saga_id = await engine.start(saga, 7)
        record = await engine.wait(saga_id, timeout=5)
        assert record.status is SagaStatus.FAILED
        assert "constraint violated" in (record.error or "")
        # The step's outcome was not recorded: it is still RUNNING (uncertain), not SUCCEEDED.
        assert record.steps[("second", "forward")].status is StepStatus.RUNNING
        assert writes == [f"{saga_id}:first:forward"]

        await engine.retry(saga_id)
        record = await engine.wait(saga_id, timeout=5)
    assert record.status is SagaStatus.SUCCEEDED
    assert writes == [f"{saga_id}:first:forward", f"{saga_id}:second:forward"]


async def test_sqlite_atomic_writes_land_in_the_same_transaction(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    saga = Saga("atomic_sqlite", version=1)

    @saga.step
    async def pay(ctx: StepContext, amount: int) -> int:
        ctx.atomic(
            lambda conn: conn.execute(
                "INSERT INTO payments VALUES (?, ?)", (ctx.idempotency_key, amount)
            )
        )
        return amount

    store = SQLiteStore(f"sqlite:///{path}")
    async with Engine(store) as engine:
        await store.run_in_transaction(
            lambda conn: conn.execute("CREATE TABLE payments (key TEXT PRIMARY KEY, amount INT)")
        )
        record = await engine.wait(await engine.start(saga, 5000), timeout=10)
    assert record.status is SagaStatus.SUCCEEDED
    rows = sqlite3.connect(path).execute("SELECT key, amount FROM payments").fetchall()
    assert rows == [(f"{record.id}:pay:forward", 5000)]


async def test_sqlite_failing_atomic_write_rolls_back_its_transition(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    saga = Saga("atomic_sqlite_fail", version=1)

    @saga.step
    async def pay(ctx: StepContext, amount: int) -> int:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO payments VALUES (?, ?)", ("first-row", amount))
            conn.execute("INSERT INTO payments VALUES (?, ?)", ("taken", amount))

        ctx.atomic(write)
        return amount

    @saga.step
    async def ship(ctx: StepContext, amount: int) -> int:
        return amount

    store = SQLiteStore(f"sqlite:///{path}")
    async with Engine(store) as engine:

        def setup(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE payments (key TEXT PRIMARY KEY, amount INT)")
            conn.execute("INSERT INTO payments VALUES ('taken', 0)")

        await store.run_in_transaction(setup)
        saga_id = await engine.start(saga, 5000)
        record = await engine.wait(saga_id, timeout=10)
        full = await engine.get(saga_id)
    assert record.status is SagaStatus.FAILED
    assert "UNIQUE constraint failed" in (record.error or "")
    assert full.steps[("pay", "forward")].status is StepStatus.RUNNING
    assert ("ship", "forward") not in full.steps  # the merged "ship RUNNING" was rolled back
    rows = sqlite3.connect(path).execute("SELECT key FROM payments").fetchall()
    assert rows == [("taken",)]


async def test_start_with_records_the_apps_rows_and_the_saga_in_one_transaction(
    tmp_path: Path,
) -> None:
    """``Engine.start_with``: ``record`` writes in the transaction that creates the saga and
    returns its input; a refused ``record`` leaves neither its rows nor a saga; a used key
    starts nothing and leaves none of ``record``'s rows."""
    path = tmp_path / "log.db"
    saga = Saga("start_with", version=1)

    @saga.step
    async def pay(ctx: StepContext, order: dict[str, Any]) -> str:
        return str(order["order"])

    def record(order: str, fail: bool = False) -> Any:
        def write(conn: sqlite3.Connection, saga_id: str) -> dict[str, str]:
            conn.execute("INSERT INTO orders VALUES (?, ?)", (order, saga_id))
            if fail:
                raise ValueError("refused")
            return {"order": order}

        return write

    store = SQLiteStore(f"sqlite:///{path}")
    async with Engine(store) as engine:
        await store.run_in_transaction(
            lambda conn: conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, saga TEXT)")
        )
        saga_id, created = await engine.start_with(saga, record("o-1"), idempotency_key="k1")
        assert created
        finished = await engine.wait(saga_id, timeout=10)
        with pytest.raises(ValueError, match="refused"):
            await engine.start_with(saga, record("o-2", fail=True), idempotency_key="k2")
        again = await engine.start_with(saga, record("o-3"), idempotency_key="k1")
        assert (await engine.list_sagas()).total == 1
    assert (finished.status, finished.input, finished.output("pay")) == (
        SagaStatus.SUCCEEDED,
        {"order": "o-1"},
        "o-1",
    )
    assert again == (saga_id, False)
    rows = sqlite3.connect(path).execute("SELECT id, saga FROM orders").fetchall()
    assert rows == [("o-1", saga_id)]


async def test_start_with_on_the_memory_store() -> None:
    saga = Saga("start_with_memory", version=1)

    @saga.step
    async def only(ctx: StepContext, n: int) -> int:
        return n * 2

    called: list[str] = []

    def record(conn: Any, saga_id: str) -> int:
        called.append(saga_id)
        return 21

    async with Engine(MemoryStore(), clock=VirtualClock(auto_advance=True)) as engine:
        saga_id, created = await engine.start_with(saga, record, idempotency_key="k")
        assert created
        assert (await engine.wait(saga_id, timeout=5)).output("only") == 42
        assert await engine.start_with(saga, record, idempotency_key="k") == (saga_id, False)
        assert called == [saga_id]  # (nothing to undo on the memory store: not called again)
