"""Idempotency keys, drafts, 202 + Location, seed-compatible routes, admin actions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from e2e_helpers import balances, inventory, order

from checkout.bootstrap import Services
from checkout.participants import saga_input
from compiled_build import interpreted_only
from sagaway import Engine, RetryPolicy

ITEMS = [{"product_id": "product_1", "quantity": 2}]


async def test_idempotency_key_returns_the_same_order_and_one_saga(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "order-abc-1"}
    body = {"customer_id": "user_1", "items": ITEMS}
    first = await client.post("/orders", json=body, headers=headers)
    again = await asyncio.gather(
        *(client.post("/orders", json=body, headers=headers) for _ in range(5))
    )

    assert first.status_code == 201
    for response in again:
        assert response.status_code == 201
        assert response.json()["order_id"] == first.json()["order_id"]
        assert response.json()["saga_id"] == first.json()["saga_id"]
    assert (await client.get("/sagas")).json()["total"] == 1
    assert len((await client.get("/orders")).json()["orders"]) == 1
    assert (await balances(client))["user_1"] == 900.0  # charged once
    assert (await inventory(client))["product_1"] == 98


async def test_concurrent_first_requests_with_one_key_make_one_order(
    client: httpx.AsyncClient,
) -> None:
    headers = {"Idempotency-Key": "race-1"}
    body = {"customer_id": "user_1", "items": ITEMS}
    responses = await asyncio.gather(
        *(client.post("/orders", json=body, headers=headers) for _ in range(10))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["order_id"] for r in responses}) == 1
    assert len({r.json()["saga_id"] for r in responses}) == 1
    assert (await client.get("/sagas")).json()["total"] == 1
    assert (await balances(client))["user_1"] == 900.0


async def test_draft_then_checkout(client: httpx.AsyncClient) -> None:
    draft = await order(client, customer_id="user_1", items=ITEMS, checkout=False)
    assert draft["status"] == "pending"
    assert draft["saga_id"] is None
    assert draft["saga_status"] is None
    assert draft["steps"] == []
    assert (await client.get("/sagas")).json()["total"] == 0
    seed = (await client.get(f"/saga/{draft['order_id']}")).json()
    assert seed["status"] == "PENDING"
    assert seed["saga_id"] is None

    first = await client.post(f"/checkout/{draft['order_id']}")
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "completed"
    second = await client.post(f"/checkout/{draft['order_id']}")
    assert second.status_code == 200
    assert second.json()["saga_id"] == first.json()["saga_id"]
    assert second.json()["status"] == "completed"
    assert (await client.get("/sagas")).json()["total"] == 1
    assert (await balances(client))["user_1"] == 900.0


async def test_checkout_of_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/checkout/ord_missing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Order ord_missing not found"}


async def test_wait_zero_answers_202_with_location(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/orders", params={"wait": 0}, json={"user_id": "user_2", "items": ITEMS}
    )
    assert response.status_code == 202
    assert response.headers["Location"] == f"/orders/{response.json()['order_id']}"
    assert response.json()["status"] == "processing"
    deadline = time.monotonic() + 10
    while True:
        polled = (await client.get(response.headers["Location"])).json()
        if polled["status"] != "processing" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert polled["status"] == "completed"
    assert polled["saga_status"] == "SUCCEEDED"


async def test_shop_routes(client: httpx.AsyncClient, services: Services) -> None:
    assert (await client.get("/inventory")).json() == {
        "inventory": {"product_1": 100, "product_2": 50, "product_3": 25}
    }
    products = (await client.get("/products")).json()["products"]
    assert [(p["product_id"], p["price"], p["stock"]) for p in products] == [
        ("product_1", 50.0, 100),
        ("product_2", 20.0, 50),
        ("product_3", 100.0, 25),
    ]
    accounts = (await client.get("/accounts")).json()["accounts"]
    assert [(a["user_id"], a["balance"]) for a in accounts] == [
        ("user_1", 1000.0),
        ("user_2", 500.0),
        ("user_3", 200.0),
    ]
    assert accounts[2]["shipping_address"]["postal_code"] == "00000"

    await order(client, customer_id="user_1", items=ITEMS)
    reset = await client.post("/reset", json={})
    assert reset.status_code == 200
    assert reset.json()["balances"]["user_1"] == 1000.0
    assert reset.json()["inventory"]["product_1"] == 100
    assert (await balances(client))["user_1"] == 1000.0
    assert (await client.get("/orders")).json()["orders"] == []


async def test_reset_is_forbidden_outside_demo_mode(
    client: httpx.AsyncClient, services: Services
) -> None:
    services.settings.demo = False
    response = await client.post("/reset", json={})
    assert response.status_code == 403
    assert "SAGAWAY_DEMO=true" in response.json()["detail"]


async def test_health_and_root(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["executing"] is True
    root = await client.get("/")
    assert root.status_code == 200, "the shop page"
    assert 'href="/docs"' in root.text
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "Sagaway checkout"


async def test_admin_actions_on_finished_or_unknown_sagas(client: httpx.AsyncClient) -> None:
    data = await order(client, customer_id="user_1", items=ITEMS)
    saga_id = data["saga_id"]
    for action in ("retry", "cancel"):
        response = await client.post(f"/sagas/{saga_id}/{action}")
        assert response.status_code == 409, response.text
        assert response.json()["detail"]
        missing = await client.post(f"/sagas/nope/{action}")
        assert missing.status_code == 404
    assert (await client.get("/sagas/nope")).status_code == 404
    assert (await client.get("/saga/nope")).status_code == 404
    assert (await client.get("/orders/nope")).json() == {"detail": "Order nope not found"}


async def test_cancel_an_api_only_saga_marks_the_order_cancelled(
    client: httpx.AsyncClient, services: Services
) -> None:
    # A saga recorded for a worker (not started here) can be cancelled before it runs.
    draft = await order(client, customer_id="user_1", items=ITEMS, checkout=False)
    info = await services.participants.orders.get_order(draft["order_id"])
    assert info is not None
    api_only = Engine(services.engine.store, execute=False, owner_id="api")
    saga_id = await api_only.start(services.saga, saga_input(info), idempotency_key="c-1")
    await services.tracker.attach(info.id, saga_id)
    cancelled = await client.post(f"/sagas/{saga_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    deadline = time.monotonic() + 10
    while True:
        polled = (await client.get(f"/orders/{info.id}")).json()
        if polled["status"] != "processing" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert polled["status"] == "cancelled"
    assert polled["saga_status"] == "COMPENSATED"
    assert (await balances(client))["user_1"] == 1000.0


@interpreted_only  # replaces a method of the payment service: a compiled instance refuses that
async def test_failed_compensation_then_operator_retry(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refund_unavailable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("payment provider unavailable")

    def refund_write_unavailable(*args: object, **kwargs: object) -> Callable[[object], None]:
        def write(conn: object) -> None:
            raise ConnectionError("payment provider unavailable")

        return write

    # Both ways a refund goes: its own write, and (the shop's tables in the saga log's file)
    # the compensation's transition.
    monkeypatch.setattr(services.participants.payment, "refund", refund_unavailable)
    monkeypatch.setattr(
        services.participants.payment, "refund_in_saga_log", refund_write_unavailable
    )
    # The checkout's compensations ride out an outage for ~76 s before needing an operator;
    # this test's outage is "forever": give up after five quick attempts instead.
    payment = next(step for step in services.saga.steps if step.name == "process_payment")
    monkeypatch.setattr(payment, "compensation_retry", RetryPolicy(max_attempts=5))
    data = await order(client, user_id="user_3", product_id="product_1", quantity=1)
    assert data["status"] == "failed"
    assert data["saga_status"] == "FAILED"
    assert "compensation of process_payment failed" in data["error"]
    assert (await balances(client))["user_3"] == 150.0  # charged, refund pending

    monkeypatch.undo()
    retried = await client.post(f"/sagas/{data['saga_id']}/retry")
    assert retried.status_code == 202, retried.text
    deadline = time.monotonic() + 10
    while True:
        polled = (await client.get(f"/orders/{data['order_id']}")).json()
        if polled["saga_status"] == "COMPENSATED" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert (polled["status"], polled["saga_status"]) == ("failed", "COMPENSATED")
    assert polled["error"]  # the engine keeps the saga's last error message
    assert (await balances(client))["user_3"] == 200.0
    assert (await inventory(client))["product_1"] == 100
    again = await client.post(f"/sagas/{data['saga_id']}/retry")
    assert again.status_code == 409


async def test_order_list_agrees_with_each_order(client: httpx.AsyncClient) -> None:
    """The list leaves out the saga's live view (``saga_status``, ``steps``: one saga read per
    order); every field it does show equals ``GET /orders/{id}``'s."""
    await order(client, customer_id="user_1", items=ITEMS)
    await order(client, user_id="user_2", product_id="product_1", quantity=200)  # fails
    draft = await order(client, customer_id="user_1", items=ITEMS, checkout=False)
    listed = (await client.get("/orders")).json()["orders"]
    assert len(listed) == 3
    for summary in listed:
        assert "saga_status" not in summary
        assert "steps" not in summary
        full = (await client.get(f"/orders/{summary['order_id']}")).json()
        assert summary == {k: v for k, v in full.items() if k not in ("saga_status", "steps")}
    assert {o["status"] for o in listed} == {"completed", "failed", "pending"}
    assert next(o for o in listed if o["order_id"] == draft["order_id"])["saga_id"] is None
    spec = (await client.get("/openapi.json")).json()
    page = spec["components"]["schemas"]["OrderPage"]["properties"]["orders"]["items"]["$ref"]
    assert "steps" not in spec["components"]["schemas"][page.rsplit("/", 1)[-1]]["properties"]


async def test_placing_an_order_answers_the_document_reading_it_gives(
    client: httpx.AsyncClient,
) -> None:
    # POST /orders dumps its OrderOut itself (routes.orders.answered), GET /orders/{id} through
    # FastAPI's response model: the same document, byte for byte, in either outcome.
    happy = {"customer_id": "user_1", "items": ITEMS, "payment_method": "card"}
    refused = {"customer_id": "user_1", "items": [{"product_id": "product_3", "quantity": 1000}]}
    for body in (happy, refused):
        placed = await client.post("/orders", json=body)
        assert placed.status_code == 201
        assert placed.headers["content-type"] == "application/json"
        assert "idempotent-replayed" not in placed.headers
        read = await client.get(f"/orders/{placed.json()['order_id']}")
        assert read.status_code == 200
        # Only the row's updated_at may have moved since (the failure's mirror write).
        moved = placed.json()["updated_at"].encode(), read.json()["updated_at"].encode()
        assert placed.content.replace(*moved) == read.content
