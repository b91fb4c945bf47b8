"""``sagaway retry`` on a real SQLite saga log: an operator hands a FAILED saga back to the
workers, and a worker that knows its definition then finishes it, running the failed call again
under the same idempotency key and nothing else. Retrying a saga that is not FAILED, or an
unknown id, is an error (exit 1, a message) that changes nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sagaway import (
    Engine,
    EventType,
    Phase,
    RetryPolicy,
    Saga,
    SagaStatus,
    StepContext,
    StepFailed,
    StepKind,
)
from sagaway.cli import app
from sagaway.state import SagaRecord

runner = CliRunner()
ONCE = RetryPolicy(max_attempts=1)


class Shop:
    """Participants whose failures an operator can fix: while ``broken`` holds a call's name,
    that call fails (the courier rejects; the refund gateway is down)."""

    def __init__(self) -> None:
        self.broken: set[str] = set()
        self.calls: Counter[tuple[str, str]] = Counter()  # (call, idempotency key)

    def saga(self) -> Saga:
        saga = Saga("cli-retry")

        @saga.step
        async def reserve(ctx: StepContext, order: dict[str, str]) -> None:
            self.calls["reserve", ctx.idempotency_key] += 1
            if order["path"] == "compensate":
                raise StepFailed("out of stock")  # the saga compensates: nothing to undo

        @saga.step(kind=StepKind.PIVOT)
        async def pay(ctx: StepContext, order: dict[str, str]) -> None:
            self.calls["pay", ctx.idempotency_key] += 1

        @saga.step(kind=StepKind.RETRIABLE)
        async def ship(ctx: StepContext, order: dict[str, str]) -> None:
            self.calls["ship", ctx.idempotency_key] += 1
            if "ship" in self.broken:
                raise StepFailed("courier rejected the address")

        return saga

    def compensating_saga(self) -> Saga:
        saga = Saga("cli-retry-undo")

        @saga.step
        async def hold(ctx: StepContext, order: dict[str, str]) -> None:
            self.calls["hold", ctx.idempotency_key] += 1

        @hold.compensation
        async def unhold(ctx: StepContext, order: dict[str, str], out: None) -> None:
            self.calls["unhold", ctx.idempotency_key] += 1
            if "unhold" in self.broken:
                raise ConnectionError("gateway down")

        @saga.step
        async def confirm(ctx: StepContext, order: dict[str, str]) -> None:
            raise StepFailed("declined")

        # Every compensation attempt fails while broken: no backoff to wait for.
        saga.steps[0].compensation_retry = ONCE
        return saga


async def _failed(url: str, shop: Shop, saga: Saga) -> str:
    async with Engine(url, sagas=[saga], owner_id="worker", recovery_interval=3600) as engine:
        record = await engine.wait(await engine.start(saga, {"path": "forward"}), timeout=30)
    assert record.status is SagaStatus.FAILED, record
    return record.id


async def _load(url: str, saga_id: str) -> SagaRecord:
    async with Engine(url, execute=False, owner_id="reader") as engine:
        return await engine.get(saga_id)


async def _worker_finishes(url: str, saga: Saga, saga_id: str) -> SagaRecord:
    async with Engine(url, sagas=[saga], owner_id="worker-2", recovery_interval=3600) as engine:
        return await engine.wait(saga_id, timeout=30)  # claimed by open()'s recovery pass


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'log.db'}"


def test_retry_hands_a_saga_failed_past_its_pivot_back_and_a_worker_finishes_it(
    url: str,
) -> None:
    shop = Shop()
    saga = shop.saga()
    shop.broken.add("ship")
    saga_id = asyncio.run(_failed(url, shop, saga))

    shop.broken.clear()  # the operator fixed the address
    result = runner.invoke(app, ["--store", url, "retry", saga_id[:12]])
    assert result.exit_code == 0, result.output
    assert f"saga {saga_id} handed back to the workers" in result.output
    handed = asyncio.run(_load(url, saga_id))
    assert (handed.status, handed.owner) == (SagaStatus.RUNNING, None), "unowned, claimable"
    assert any(e.type is EventType.RETRY_REQUESTED for e in handed.history)

    record = asyncio.run(_worker_finishes(url, saga, saga_id))
    assert record.status is SagaStatus.SUCCEEDED
    key = f"{saga_id}:{{}}:forward".format
    assert shop.calls == {
        ("reserve", key("reserve")): 1,
        ("pay", key("pay")): 1,
        ("ship", key("ship")): 2,
    }


def test_retry_of_a_failed_compensation_runs_only_that_compensation_again(url: str) -> None:
    shop = Shop()
    saga = shop.compensating_saga()
    shop.broken.add("unhold")
    saga_id = asyncio.run(_failed(url, shop, saga))
    failed = asyncio.run(_load(url, saga_id))
    assert failed.error == "compensation of hold failed: ConnectionError: gateway down"

    shop.broken.clear()
    result = runner.invoke(app, ["--store", url, "retry", saga_id])
    assert result.exit_code == 0, result.output
    assert asyncio.run(_load(url, saga_id)).status is SagaStatus.COMPENSATING

    record = asyncio.run(_worker_finishes(url, saga, saga_id))
    assert record.status is SagaStatus.COMPENSATED
    assert record.error == "declined", "the reason it compensated, not the compensation's error"
    undo = record.step("hold", Phase.COMPENSATION)
    assert undo is not None
    assert undo.attempts == 2
    assert shop.calls == {
        ("hold", f"{saga_id}:hold:forward"): 1,
        ("unhold", f"{saga_id}:hold:compensation"): 2,
    }


def test_retry_refuses_a_saga_that_is_not_failed_and_changes_nothing(url: str) -> None:
    shop = Shop()
    saga = shop.saga()
    saga_id = asyncio.run(_failed_or_done(url, saga))
    before = asyncio.run(_load(url, saga_id))
    result = runner.invoke(app, ["--store", url, "retry", saga_id])
    assert result.exit_code == 1
    assert "is SUCCEEDED: only FAILED sagas can be retried" in result.output
    after = asyncio.run(_load(url, saga_id))
    assert (after.status, after.updated_at, len(after.history)) == (
        before.status,
        before.updated_at,
        len(before.history),
    )


def test_retry_of_an_unknown_saga_is_an_error(url: str) -> None:
    asyncio.run(_failed_or_done(url, Shop().saga()))  # the log exists
    result = runner.invoke(app, ["--store", url, "retry", "no-such-saga"])
    assert result.exit_code == 1
    assert "not found" in result.output


async def _failed_or_done(url: str, saga: Saga) -> str:
    async with Engine(url, sagas=[saga], owner_id="worker", recovery_interval=3600) as engine:
        record = await engine.wait(await engine.start(saga, {"path": "forward"}), timeout=30)
    assert record.status is SagaStatus.SUCCEEDED
    return record.id
