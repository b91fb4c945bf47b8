"""Retention in the engine (issue 14): ``Engine(retention_days=...)`` prunes finished sagas
from its maintenance loop, never an unfinished, FAILED or pinned one; and how the option and
``SAGAWAY_RETENTION_DAYS`` are checked."""

import asyncio
import logging
from typing import Any

import pytest

from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.errors import SagawayError
from sagaway.retention import DAY, Retention, retention_days_from_env
from sagaway.state import NewSaga, SagaRecord
from sagaway.store.base import Page, SagaStore
from sagaway.store.memory import MemoryStore
from sagaway.testing import VirtualClock

T0 = 1_700_000_000.0

shop = Saga("retention-shop")


@shop.step(retry=RetryPolicy(max_attempts=1))
async def reserve(ctx: StepContext, data: dict[str, Any]) -> int:
    if data["outcome"] == "compensated":
        raise StepFailed("out of stock")
    return 1


@reserve.compensation
async def release(ctx: StepContext, data: dict[str, Any], output: int | None) -> None:
    if data["outcome"] == "failed":
        raise RuntimeError("inventory service down")  # the saga ends FAILED


@shop.step(retry=RetryPolicy(max_attempts=1))
async def pay(ctx: StepContext, data: dict[str, Any]) -> None:
    if data["outcome"] == "failed":
        raise StepFailed("card declined")


async def _until(condition: Any, what: str) -> None:
    """Poll with a deadline: the maintenance loop runs on real time."""
    deadline = asyncio.get_running_loop().time() + 10
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_the_maintenance_loop_prunes_old_finished_sagas_only() -> None:
    store, clock = MemoryStore(), VirtualClock(T0, auto_advance=True)
    async with Engine(
        store, sagas=[shop], clock=clock, retention_days=2, recovery_interval=0.01
    ) as engine:
        ids = {}
        for outcome in ("succeeded", "compensated", "failed", "pinned"):
            ids[outcome] = await engine.start(shop, {"outcome": outcome})
            await engine.wait(ids[outcome], timeout=10)
        statuses = {k: (await store.get(v)).status for k, v in ids.items()}
        assert statuses == {
            "succeeded": SagaStatus.SUCCEEDED,
            "compensated": SagaStatus.COMPENSATED,
            "failed": SagaStatus.FAILED,
            "pinned": SagaStatus.SUCCEEDED,
        }
        await store.set_pinned(ids["pinned"], True)
        # Unfinished and of a definition nobody here runs: it stays RUNNING however old.
        await store.create(
            NewSaga(id="unfinished", name="elsewhere", version=1, input=None, at=T0 - 10 * DAY)
        )
        clock.advance(2.5 * DAY)

        async def pruned() -> bool:
            return [await store.load(ids[k]) for k in ("succeeded", "compensated")] == [None, None]

        await _until(pruned, "the finished sagas to be pruned")
        left = {r.id for r in (await store.list_sagas(limit=10)).items}
        assert left == {ids["failed"], ids["pinned"], "unfinished"}


async def test_a_pass_works_off_a_backlog_in_batches() -> None:
    store, clock = MemoryStore(), VirtualClock(T0)
    for n in range(25):
        await store.create(
            NewSaga(
                id=f"s{n:02}",
                name="x",
                version=1,
                input=None,
                at=T0,
                status=SagaStatus.SUCCEEDED,
            )
        )
    retention = Retention(store, 1, clock, interval=60, batch=10)
    clock.advance(0.9 * DAY)
    assert await retention.tick() == 0  # not old enough yet
    assert await retention.tick() == 0  # and the next pass is an interval away
    clock.advance(0.2 * DAY)
    assert await retention.tick() == 25
    assert (await store.list_sagas()).total == 0
    assert await retention.tick() == 0  # the next pass is an interval away


class _Plain(SagaStore):
    """A store without the PruningStore tier (only the port's abstract methods)."""

    async def create(self, new: NewSaga) -> tuple[str, bool]:
        raise NotImplementedError

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    async def load(self, saga_id: str, *, history: bool = True) -> SagaRecord | None:
        return None

    async def list_sagas(self, **kwargs: Any) -> Page:
        return Page([], 0)

    async def counts(self) -> dict[SagaStatus, int]:
        return {}

    async def claim(self, *args: Any, **kwargs: Any) -> list[SagaRecord]:
        return []

    async def acquire(self, *args: Any, **kwargs: Any) -> SagaRecord | None:
        return None

    async def renew_leases(self, *args: Any, **kwargs: Any) -> list[str]:
        return []

    async def request_cancel(self, *args: Any, **kwargs: Any) -> SagaRecord:
        raise NotImplementedError


def test_retention_needs_a_pruning_store_and_a_positive_age() -> None:
    with pytest.raises(SagawayError, match="PruningStore"):
        Engine(_Plain(), retention_days=7)
    for bad in (0, -1, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="retention_days"):
            Engine(MemoryStore(), retention_days=bad)
    Engine(MemoryStore(), retention_days=0.5)  # half a day is fine


def test_the_environment_variable() -> None:
    assert retention_days_from_env({}) is None
    assert retention_days_from_env({"SAGAWAY_RETENTION_DAYS": " "}) is None
    assert retention_days_from_env({"SAGAWAY_RETENTION_DAYS": "7"}) == 7.0
    assert retention_days_from_env({"SAGAWAY_RETENTION_DAYS": "0.25"}) == 0.25
    for bad in ("seven", "0", "-3", "inf", "nan"):
        with pytest.raises(SagawayError, match="SAGAWAY_RETENTION_DAYS"):
            retention_days_from_env({"SAGAWAY_RETENTION_DAYS": bad})


async def test_a_failing_pass_is_logged_and_tried_again_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(MemoryStore):
        async def prunable(self, *, finished_before: float, limit: int) -> list[str]:
            raise OSError("disk on fire")

    clock = VirtualClock(T0)
    retention = Retention(Broken(), 1, clock, interval=60)
    with caplog.at_level(logging.ERROR, logger="sagaway.retention"):
        assert await retention.tick() == 0
    assert "pruning finished sagas failed" in caplog.text
