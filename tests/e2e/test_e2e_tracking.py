"""Order status follows the saga durably: a crash between the saga's terminal write and the
order update is repaired by reconciliation on start and by reading the order."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from e2e_helpers import hold_first_step, order
from fastapi import FastAPI
from sqlalchemy import update

from checkout.api import create_app
from checkout.bootstrap import Role, Services, bootstrap
from checkout.db import OrderRow
from checkout.domain.models import OrderLine, OrderStatus
from checkout.participants import saga_input
from checkout.settings import Settings
from checkout.tracking import saga_key
from compiled_build import interpreted_only

ITEMS = [{"product_id": "product_1", "quantity": 1}]


async def _lose_the_mirror(services: Services, order_id: str) -> None:
    """What a crash right after the saga's terminal write leaves behind."""
    async with services.db.sessions.begin() as session:
        await session.execute(
            update(OrderRow).where(OrderRow.id == order_id).values(status="processing", error=None)
        )


async def test_reading_an_order_repairs_a_lagging_row(
    client: httpx.AsyncClient, services: Services
) -> None:
    data = await order(client, user_id="user_3", items=ITEMS)
    await _lose_the_mirror(services, data["order_id"])

    fetched = (await client.get(f"/orders/{data['order_id']}")).json()
    assert (fetched["status"], fetched["error"]) == ("failed", "Invalid shipping address")
    row = await services.participants.orders.get_order(data["order_id"])
    assert row is not None
    assert (row.status, row.error) == ("failed", "Invalid shipping address")


async def test_reconcile_fixes_orders_left_processing(
    client: httpx.AsyncClient, services: Services
) -> None:
    ok = await order(client, user_id="user_1", items=ITEMS)
    bad = await order(client, user_id="user_1", product_id="product_1", quantity=500)
    for data in (ok, bad):
        await _lose_the_mirror(services, data["order_id"])

    assert await services.tracker.reconcile(grace_seconds=0) == 2
    orders = services.participants.orders
    first, second = await orders.get_order(ok["order_id"]), await orders.get_order(bad["order_id"])
    assert first is not None
    assert second is not None
    assert first.status == "completed"
    assert (second.status, second.error) == ("failed", "Insufficient inventory")
    assert await services.tracker.reconcile(grace_seconds=0) == 0  # idempotent


async def test_startup_reconciles_before_serving(settings: Settings) -> None:
    async with bootstrap(settings) as services:
        view, _ = await services.checkout.place_order(
            "user_1", [OrderLine(product_id="product_1", quantity=1)], wait=10
        )
        assert view.status == "completed"
        await _lose_the_mirror(services, view.order.id)
    async with bootstrap(settings) as services:
        row = await services.participants.orders.get_order(view.order.id)
        assert row is not None
        assert row.status == "completed"


async def test_api_only_process_records_sagas_for_a_worker(settings: Settings) -> None:
    api: FastAPI = create_app(settings, role=Role.API)
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await client.post(
                "/orders", params={"wait": 0}, json={"user_id": "user_1", "items": ITEMS}
            )
            assert response.status_code == 202
            assert response.json()["saga_status"] == "PENDING"
            assert (await client.get("/health")).json()["executing"] is False
            async with bootstrap(settings, role=Role.WORKER) as worker:
                saga_id = response.json()["saga_id"]
                record = await worker.engine.wait(saga_id, timeout=10)
                assert record.status == "SUCCEEDED"
                # The worker's listener mirrored it; the API reports it either way.
                fetched = (await client.get(response.headers["Location"])).json()
                assert fetched["status"] == "completed"


async def _record_without_saga(services: Services, *, checkout: bool) -> str:
    """What a crash right after recording an order, before its saga started, leaves behind."""
    order_, created = await services.participants.orders.create_order(
        "user_1", [OrderLine(product_id="product_1", quantity=1)], checkout=checkout
    )
    assert created
    assert order_.saga_id is None
    return order_.id


async def test_reconcile_starts_the_saga_of_an_order_recorded_just_before_a_crash(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    orders = services.participants.orders
    checked_out = await _record_without_saga(services, checkout=True)
    draft = await _record_without_saga(services, checkout=False)
    released = hold_first_step(services, monkeypatch)

    assert await services.tracker.reconcile(grace_seconds=0) == 1
    row = await orders.get_order(checked_out)
    assert row is not None
    assert row.saga_id is not None
    released.set()
    record = await services.engine.wait(row.saga_id, timeout=10)
    assert record.status == "SUCCEEDED"
    view = await services.checkout.get(checked_out)
    assert view.status == "completed"
    # The draft waits for its checkout; a second pass starts nothing new.
    untouched = await orders.get_order(draft)
    assert untouched is not None
    assert (untouched.status, untouched.saga_id) == ("pending", None)
    assert await services.tracker.reconcile(grace_seconds=0) == 0
    page = await services.engine.list_sagas(limit=100)
    assert page.total == 1


async def test_reconcile_attaches_a_saga_started_just_before_a_crash(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Crash between the saga's start and attaching it to the order: the saga is found by the
    order's key, not started twice."""
    released = hold_first_step(services, monkeypatch)
    order_id = await _record_without_saga(services, checkout=True)
    order_ = await services.participants.orders.get_order(order_id)
    assert order_ is not None
    first = await services.engine.start(
        services.saga, saga_input(order_), idempotency_key=saga_key(order_id)
    )

    assert await services.tracker.reconcile(grace_seconds=0) == 1
    row = await services.participants.orders.get_order(order_id)
    assert row is not None
    assert row.saga_id == first
    assert (await services.engine.list_sagas(limit=100)).total == 1
    held_saga = await services.engine.store.load(first, history=False)
    assert held_saga is not None
    assert not held_saga.status.is_terminal
    released.set()
    assert (await services.engine.wait(first, timeout=10)).status == "SUCCEEDED"


async def test_startup_starts_sagas_of_orders_left_without_one(settings: Settings) -> None:
    async with bootstrap(settings) as services:
        order_id = await _record_without_saga(services, checkout=True)
    async with bootstrap(settings) as services:
        row = await services.participants.orders.get_order(order_id)
        assert row is not None
        assert row.saga_id is not None
        record = await services.engine.wait(row.saga_id, timeout=10)
        assert record.status == "SUCCEEDED"


class _ControlledSleep:
    """Stands in for ``asyncio.sleep`` of exactly ``delay`` seconds (the reconcile loop's
    interval): each such sleep reports itself and waits for ``tick()``; others sleep for real.
    The loop's passes then happen when the test says, never because time went by."""

    def __init__(self, delay: float, real: Any) -> None:
        self.delay, self.real = delay, real
        self.sleeping: asyncio.Queue[None] = asyncio.Queue()
        self._ticks: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, delay: float, result: Any = None) -> Any:
        if delay != self.delay:
            return await self.real(delay, result)
        self.sleeping.put_nowait(None)
        await self._ticks.get()
        return result

    async def next_pass(self) -> None:
        """Let the loop run one pass, and return once it is asleep again (the pass is over)."""
        self._ticks.put_nowait(None)
        await asyncio.wait_for(self.sleeping.get(), timeout=30)


async def test_the_periodic_reconcile_loop_repairs_orders_and_survives_a_failing_pass(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    interval = 4.321  # a value nothing else sleeps for
    sleep = _ControlledSleep(interval, asyncio.sleep)
    monkeypatch.setattr(asyncio, "sleep", sleep)
    async with bootstrap(settings, reconcile_interval=interval) as services:
        await asyncio.wait_for(sleep.sleeping.get(), timeout=30)  # started, waiting
        services.tracker.grace_seconds = 0  # this test's rows are fresh on purpose
        view, _ = await services.checkout.place_order(
            "user_1", [OrderLine(product_id="product_1", quantity=1)], wait=10
        )
        assert view.status == "completed"
        await _lose_the_mirror(services, view.order.id)
        orders = services.participants.orders

        real_reconcile = services.tracker.reconcile
        failures = 0

        async def failing_once(**kwargs: Any) -> int:
            nonlocal failures
            if not failures:
                failures += 1
                raise ConnectionError("shop database went away")
            return await real_reconcile(**kwargs)

        monkeypatch.setattr(services.tracker, "reconcile", failing_once)
        await sleep.next_pass()  # this pass fails: logged, and the loop goes on
        assert failures == 1
        row = await orders.get_order(view.order.id)
        assert row is not None
        assert row.status == "processing"

        await sleep.next_pass()  # the next one repairs the order
        row = await orders.get_order(view.order.id)
        assert row is not None
        assert row.status == "completed"


async def test_the_reconcile_loop_runs_every_five_seconds_by_default(settings: Settings) -> None:
    async with bootstrap(settings) as services:
        assert services.tracker.reconcile_interval == 5.0
        assert services.tracker._loop_task is not None
        assert not services.tracker._loop_task.done()


@interpreted_only  # replaces a method of the orders service: a compiled instance refuses that
async def test_a_success_is_written_into_the_order_with_the_sagas_last_transition(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite (orders in the saga log's file) the order's ``completed`` commits with the
    saga's SUCCEEDED: no mirror of the tracker's, so no window for a kill between the two. A
    failure, and any outcome on PostgreSQL, is still the tracker's write."""
    async with bootstrap(settings) as services:
        mirrored: list[tuple[str, OrderStatus]] = []

        async def no_mirror(order_id: str, saga_id: str, status: Any, error: Any) -> bool:
            mirrored.append((order_id, status))
            return False  # as if the process died before writing it

        monkeypatch.setattr(services.participants.orders, "mirror_saga", no_mirror)
        lines = [OrderLine(product_id="product_1", quantity=1)]
        ok, _ = await services.checkout.place_order("user_1", lines, wait=10)
        bad, _ = await services.checkout.place_order("user_3", lines, wait=10)
        assert (ok.status, bad.status) == ("completed", "failed")
        ok_row = await services.participants.orders.get_order(ok.order.id)
        bad_row = await services.participants.orders.get_order(bad.order.id)
        assert ok_row is not None
        assert bad_row is not None
        assert bad_row.status == "processing"  # the tracker's write, skipped here
        if settings.database_url.startswith("sqlite"):
            assert (ok_row.status, ok_row.saga_id) == ("completed", ok.order.saga_id)
            assert mirrored == [(bad.order.id, OrderStatus.FAILED)]
        else:
            assert ok_row.status == "processing"
            assert set(mirrored) == {
                (ok.order.id, OrderStatus.COMPLETED),
                (bad.order.id, OrderStatus.FAILED),
            }
