"""The API during a real PostgreSQL outage (issue 8 items 3 and 9).

The service connects as a role of its own (``pgfaults.Lockout``); an outage terminates its
sessions and refuses new ones ("too many connections", PostgreSQL's "too many clients"), at an
exact point of a request: the point is a real seam of the service (after the order's insert
committed, after its saga was recorded), the failure is PostgreSQL's.

* Nothing recorded yet: 503 with a message that says so, never a 500 (item 9).
* Once the order is recorded: never a 5xx. 202 with the order's ``Location``; the saga is
  started (or read) once the database is back, and the customer is charged exactly once
  (item 3: clients that retried after a 5xx without an Idempotency-Key were charged twice).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from e2e_helpers import hold_first_step
from fastapi import FastAPI

from checkout.api import create_app
from checkout.bootstrap import Services
from checkout.settings import Settings
from compiled_build import interpreted_only
from pgfaults import Lockout, lockout
from servers import postgres_check, require_server

BODY = {"user_id": "user_1", "product_id": "product_1", "quantity": 1}  # 50.00, completes


@pytest.fixture
def cut() -> Iterator[Lockout]:
    require_server("postgresql", postgres_check)
    with lockout() as outage:
        yield outage


@pytest.fixture
async def app(cut: Lockout) -> AsyncIterator[FastAPI]:
    settings = Settings(database_url=cut.url, store_url=cut.url, demo=True, worker_id="outage")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application
        cut.end()  # let the app shut down cleanly


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # A 500 must reach the test as a response, as it would reach a client.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://checkout.test") as c:
        yield c


@pytest.fixture
def services(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


def after(target: Any, name: str, then: Callable[[], None]) -> None:
    """Run ``then`` right after ``target.name(...)`` returns (an instance attribute that
    shadows the method for this test's app only)."""
    real: Callable[..., Awaitable[Any]] = getattr(target, name)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        then()
        return result

    setattr(target, name, wrapped)


async def balance(client: httpx.AsyncClient, account: str) -> float:
    response = await client.get("/balances")
    assert response.status_code == 200, response.text
    value: float = response.json()["balances"][account]
    return value


async def test_a_shop_outage_answers_503_and_records_nothing(
    client: httpx.AsyncClient, services: Services, cut: Lockout
) -> None:
    cut.begin()
    for path in ("/balances", "/inventory", "/orders", "/orders/ord_x"):
        response = await client.get(path)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["detail"] == "The shop database is unavailable; try again"
        assert response.headers["retry-after"] == "1"
    placed = await client.post("/orders", json=BODY)
    assert placed.status_code == 503, placed.text
    detail = placed.json()["detail"]
    assert "the order was not recorded" in detail, detail
    assert "sqlalche" not in detail
    assert "asyncpg" not in detail
    cut.end()

    listed = await client.get("/orders")
    assert listed.status_code == 200
    assert listed.json()["orders"] == []  # nothing was recorded during the outage
    retried = await client.post("/orders", json=BODY)
    assert retried.status_code == 201, retried.text


@interpreted_only  # replaces a method of the orders service: a compiled instance refuses that
@pytest.mark.parametrize("point", ["order recorded", "saga recorded"])
async def test_once_the_order_is_recorded_the_answer_is_202_never_5xx(
    client: httpx.AsyncClient,
    services: Services,
    cut: Lockout,
    point: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = await balance(client, "user_1")
    if point == "order recorded":  # its saga cannot be started: reconciliation will
        after(services.participants.orders, "create_order", cut.begin)
    else:  # its saga is recorded, nothing can be read back
        after(services.tracker, "start_checkout", cut.begin)

    response = await client.post("/orders", params={"wait": 0}, json=BODY)
    assert response.status_code == 202, response.text
    data = response.json()
    assert response.headers["location"] == f"/orders/{data['order_id']}"
    assert data["status"] == "processing"
    assert data["saga_status"] is None  # could not be read

    cut.end()
    if point == "order recorded":
        released = hold_first_step(services, monkeypatch)
        assert await services.tracker.reconcile(grace_seconds=0) == 1  # starts its saga
        released.set()
    order = await services.participants.orders.get_order(data["order_id"])
    assert order is not None
    assert order.saga_id is not None
    record = await services.engine.wait(order.saga_id, timeout=60)
    assert record.status.is_terminal, record
    fetched = await client.get(response.headers["location"])
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["status"] == "completed", fetched.text
    assert await balance(client, "user_1") == before - 50.0  # charged once


async def test_checking_out_a_draft_whose_saga_is_recorded_answers_202(
    client: httpx.AsyncClient, services: Services, cut: Lockout
) -> None:
    draft = await client.post("/orders", json={**BODY, "checkout": False})
    assert draft.status_code == 201, draft.text
    order_id = draft.json()["order_id"]
    after(services.tracker, "start_checkout", cut.begin)

    response = await client.post(f"/checkout/{order_id}", params={"wait": 0})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/orders/{order_id}"

    cut.end()
    order = await services.participants.orders.get_order(order_id)
    assert order is not None
    assert order.saga_id is not None
    record = await services.engine.wait(order.saga_id, timeout=60)
    assert record.status.is_terminal, record
    assert (await client.get(f"/orders/{order_id}")).json()["status"] == "completed"
    again = await client.post(f"/checkout/{order_id}", params={"wait": 0})
    assert again.status_code == 200, again.text  # one saga per order: nothing new started
    assert again.json()["saga_id"] == order.saga_id


async def test_the_pools_stay_within_the_connections_the_settings_allow(cut: Lockout) -> None:
    """Issue 8 item 4: processes x pool sizes must fit under max_connections, so the pools are
    sized from settings. The role may open exactly what one process of these settings needs;
    a burst of concurrent orders must neither exceed it nor fail."""
    settings = Settings(
        database_url=cut.url,
        store_url=cut.url,
        demo=True,
        worker_id="pools",
        db_pool_size=2,
        db_max_overflow=0,
        store_pool_size=2,
    )
    assert settings.connections_per_process == 5
    cut.limit(settings.connections_per_process)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://checkout.test") as c:
            responses = await asyncio.gather(
                *(
                    c.post("/orders", json={**BODY, "product_id": "product_2"})  # 20.00
                    for _ in range(40)
                )
            )
            statuses = Counter(r.status_code for r in responses)
            assert statuses == {201: 40}, [r.text for r in responses if r.status_code != 201][:3]
            orders = (await c.get("/orders", params={"limit": 100})).json()["orders"]
            assert Counter(o["status"] for o in orders) == {"completed": 40}
