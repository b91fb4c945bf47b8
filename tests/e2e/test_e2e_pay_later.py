"""Seed 004 end to end: an order waits for its payment, then a courier, as a choreography.

Every path of the issue over the HTTP API (ASGI), on SQLite and PostgreSQL with the events
in-process, and the happy and no-courier paths with the events over a real RabbitMQ vhost.
Money is checked against ``GET /balances`` before and after: a confirmed and delivered order
takes its amount once; every cancelled one leaves the balances as they were."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_helpers import balances
from fastapi import FastAPI

from checkout.api import create_app
from checkout.bootstrap import Services
from checkout.orderflow.runtime import OrderFlow
from servers import fresh_rabbit_vhost

TORONTO = {
    "street": "12 Queen St W",
    "city": "Toronto",
    "province": "ON",
    "postal_code": "M5H 2N2",
    "country": "CA",
}
# Well formed, so the order is accepted, but no courier serves it: found at delivery.
ABROAD = {
    "street": "742 Evergreen Terrace",
    "city": "Springfield",
    "province": "OR",
    "postal_code": "97403",
    "country": "US",
}
ORCHESTRATED_STEPS = [
    ("order", "order"),
    ("create_payment", "payment"),
    ("payment", "payment"),
    ("confirm_order", "order"),
    ("create_delivery", "delivery"),
    ("complete_order", "order"),
]
HAPPY_EVENTS = [
    ("create-payment", "order"),
    ("payment-created", "payment"),
    ("order-confirmed", "payment"),
    ("create-delivery", "order"),
    ("delivery-assigned", "delivery"),
    ("order-completed", "order"),
]


def flow_of(services: Services) -> OrderFlow:
    assert services.flow is not None
    return services.flow


async def create(
    client: httpx.AsyncClient, address: dict[str, str] | None = None, flow: str = "choreography"
) -> Any:
    body: dict[str, Any] = {
        "flow": flow,
        "customer_id": "user_1",
        "items": [{"product_id": "product_1", "quantity": 2}],
    }
    if address is not None:
        body["shipping_address"] = address
    response = await client.post("/orders/create_order", json=body)
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["status"] == "pending_payment"
    assert order["amount_cents"] == 10_000
    payment = await client.get(f"/payments/{order['payment_id']}")
    assert payment.status_code == 200
    assert payment.json()["status"] == "pending"
    return order


async def confirm(client: httpx.AsyncClient, payment_id: str) -> Any:
    response = await client.post("/payments/confirm", json={"payment_id": payment_id})
    assert response.status_code == 200, response.text
    return response.json()


def events(order: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["event"], e["service"]) for e in order["timeline"]]


def forward(order: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["event"], e["service"]) for e in order["timeline"] if not e["compensation"]]


async def happy_path(client: httpx.AsyncClient, flow: str = "choreography") -> None:
    before = await balances(client)
    order = await create(client, TORONTO, flow)
    assert await balances(client) == before  # a pending payment holds no money
    answer = await confirm(client, order["payment_id"])
    assert answer["payment"]["status"] == "captured"
    done = answer["order"]
    assert done["status"] == "completed"
    assert done["courier"] == "Toronto Bike Couriers"
    assert events(done) == (HAPPY_EVENTS if flow == "choreography" else ORCHESTRATED_STEPS)
    after = await balances(client)
    assert round((before["user_1"] - after["user_1"]) * 100) == 10_000
    assert {k: v for k, v in after.items() if k != "user_1"} == {
        k: v for k, v in before.items() if k != "user_1"
    }

    shown = (await client.get(f"/orders/{order['order_id']}")).json()
    assert shown["status"] == "completed"
    assert shown["courier"] == "Toronto Bike Couriers"
    assert shown["saga_status"] == "SUCCEEDED"
    saga = (await client.get(f"/sagas/{shown['saga_id']}")).json()
    assert saga["status"] == "SUCCEEDED"
    if flow == "choreography":
        assert saga["name"] == "order-choreography"
        details = [e["detail"] for e in saga["history"] if e["type"] == "step_succeeded"]
        assert details[2] == "order-confirmed emitted by payment"
    else:
        assert saga["name"] == "order-process"
        assert any(e["type"] == "signal_received" for e in saga["history"])

    again = await confirm(client, order["payment_id"])  # the same answer, no second capture
    assert again["payment"] == answer["payment"]
    assert again["order"]["status"] == "completed"
    assert await balances(client) == after
    refused = await client.post("/payments/cancel", json={"payment_id": order["payment_id"]})
    assert refused.status_code == 409
    assert "captured" in refused.json()["detail"]


async def no_courier_path(client: httpx.AsyncClient, flow: str = "choreography") -> None:
    before = await balances(client)
    order = await create(client, ABROAD, flow)
    answer = await confirm(client, order["payment_id"])
    done = answer["order"]
    assert done["status"] == "cancelled"
    assert done["reason"] == "no courier serves Springfield, OR, US"
    assert done["courier"] is None
    payment = (await client.get(f"/payments/{order['payment_id']}")).json()
    assert payment["status"] == "cancelled"
    assert payment["refunded"] is True
    assert await balances(client) == before  # captured, then refunded
    if flow == "choreography":
        assert events(done) == [
            *HAPPY_EVENTS[:4],
            ("cancel-payment", "delivery"),
            ("cancel-order", "payment"),
            ("order-cancelled", "order"),
        ]
    else:
        assert forward(done) == ORCHESTRATED_STEPS[:5]
        undone = [e["event"] for e in done["timeline"] if e["compensation"]]
        assert sorted(undone) == ["create_payment", "order"]
    saga = (await client.get(f"/sagas/{done['saga_id']}")).json()
    assert saga["status"] == "COMPENSATED"
    assert "no courier serves Springfield" in saga["error"]


FLOWS = pytest.mark.parametrize("flow", ["choreography", "orchestration"])


@FLOWS
async def test_confirmed_order_is_delivered(client: httpx.AsyncClient, flow: str) -> None:
    await happy_path(client, flow)


@FLOWS
async def test_no_courier_refunds_and_cancels(client: httpx.AsyncClient, flow: str) -> None:
    await no_courier_path(client, flow)


async def test_get_order_answers_a_pay_later_order_in_its_documented_shape(
    client: httpx.AsyncClient,
) -> None:
    """``GET /orders/{id}`` of a pay-later order answers what the API docs declare for it."""
    order = await create(client, TORONTO)
    response = await client.get(f"/orders/{order['order_id']}")
    assert response.status_code == 200, response.text
    body = response.json()
    docs = (await client.get("/openapi.json")).json()
    ok = docs["paths"]["/orders/{order_id}"]["get"]["responses"]["200"]
    declared = {r["$ref"] for r in ok["content"]["application/json"]["schema"]["anyOf"]}
    assert "#/components/schemas/PayLaterOrderOut" in declared
    schema = docs["components"]["schemas"]["PayLaterOrderOut"]
    assert set(schema["required"]) <= set(body) <= set(schema["properties"])
    assert (body["status"], body["payment_id"]) == ("pending_payment", order["payment_id"])


async def test_orders_list_shows_pay_later_orders(client: httpx.AsyncClient) -> None:
    """``GET /orders`` lists the pay-later orders with the checkout's, newest first, with their
    own statuses and courier; ``?status=`` filters either kind."""
    placed = await client.post(
        "/orders",
        json={"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 1}]},
    )
    assert placed.status_code == 201, placed.text
    pending = await create(client, TORONTO)
    delivered = await create(client, TORONTO, "orchestration")
    await confirm(client, delivered["payment_id"])
    listed = (await client.get("/orders")).json()["orders"]
    assert [o["order_id"] for o in listed] == [
        delivered["order_id"],
        pending["order_id"],
        placed.json()["order_id"],
    ]
    first, second, third = listed
    assert (first["kind"], first["status"], first["courier"]) == (
        "pay_later",
        "completed",
        "Toronto Bike Couriers",
    )
    assert first["payment_id"] == delivered["payment_id"]
    assert first["total"] == 100.0
    assert first["items"] == [
        {"product_id": "product_1", "quantity": 2, "unit_price": 50.0, "line_total": 100.0}
    ]
    assert (second["kind"], second["status"], second["courier"]) == (
        "pay_later",
        "pending_payment",
        None,
    )
    assert (third["kind"], third["status"]) == ("checkout", "completed")
    waiting = (await client.get("/orders", params={"status": "pending_payment"})).json()
    assert [o["order_id"] for o in waiting["orders"]] == [pending["order_id"]]
    done = (await client.get("/orders", params={"status": "completed"})).json()["orders"]
    assert [o["order_id"] for o in done] == [delivered["order_id"], placed.json()["order_id"]]
    page = (await client.get("/orders", params={"limit": 1, "offset": 1})).json()["orders"]
    assert [o["order_id"] for o in page] == [pending["order_id"]]
    bad = await client.get("/orders", params={"status": "lost"})
    assert bad.status_code == 422


@FLOWS
async def test_order_and_payment_ids_begin_with_the_millisecond_they_were_made(
    client: httpx.AsyncClient, flow: str
) -> None:
    """32 hex digits, the first 12 the order's creation time in milliseconds: later orders sort
    after earlier ones, so the tables keyed by these ids take new rows at their right edge."""
    order = await create(client, TORONTO, flow)
    made_ms = int(order["created_at"] * 1000)
    for key in ("order_id", "payment_id"):
        assert re.fullmatch(r"[0-9a-f]{32}", order[key]), order[key]
        assert int(order[key][:12], 16) == made_ms, (key, order)


async def test_default_address_is_the_accounts(client: httpx.AsyncClient) -> None:
    order = await create(client)
    assert order["shipping_address"]["city"] == "Toronto"


@FLOWS
async def test_customer_cancels(client: httpx.AsyncClient, flow: str) -> None:
    before = await balances(client)
    order = await create(client, TORONTO, flow)
    response = await client.post("/payments/cancel", json={"payment_id": order["payment_id"]})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["payment"]["status"] == "cancelled"
    assert answer["payment"]["refunded"] is False
    assert answer["order"]["status"] == "cancelled"
    assert answer["order"]["reason"] == "cancelled by the customer"
    again = await client.post("/payments/cancel", json={"payment_id": order["payment_id"]})
    assert again.status_code == 200
    assert again.json()["payment"] == answer["payment"]
    refused = await client.post("/payments/confirm", json={"payment_id": order["payment_id"]})
    assert refused.status_code == 409
    assert "cancelled" in refused.json()["detail"]
    assert await balances(client) == before
    saga = (await client.get(f"/sagas/{answer['order']['saga_id']}")).json()
    assert saga["status"] == "COMPENSATED"


async def test_unconfirmed_payment_times_out(client: httpx.AsyncClient, services: Services) -> None:
    """The timer's pass, run with a clock past the deadline (no sleeping): the pending payment
    is cancelled and the order with it; a payment not yet due is left alone."""
    before = await balances(client)
    order = await create(client, TORONTO)
    flow = flow_of(services)
    payment = (await client.get(f"/payments/{order['payment_id']}")).json()
    assert await flow.expire(now=payment["expires_at"] - 1) == []
    assert await flow.expire(now=payment["expires_at"] + 1) == [order["payment_id"]]
    record = await flow.monitor.wait(order["order_id"], 10)
    assert record is not None
    shown = (await client.get(f"/orders/{order['order_id']}")).json()
    assert shown["status"] == "cancelled"
    assert shown["reason"] == "payment not confirmed within 900 s"
    assert await balances(client) == before
    late = await client.post("/payments/confirm", json={"payment_id": order["payment_id"]})
    assert late.status_code == 409


async def test_unknown_payment_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/payments/confirm", "/payments/cancel"):
        response = await client.post(path, json={"payment_id": "nope"})
        assert response.status_code == 404
        assert "nope" in response.json()["detail"]
    assert (await client.get("/payments/nope")).status_code == 404


async def test_bad_orders_are_refused_with_a_message(client: httpx.AsyncClient) -> None:
    body = {"customer_id": "user_404", "items": [{"product_id": "product_1", "quantity": 1}]}
    response = await client.post("/orders/create_order", json=body)
    assert response.status_code == 422
    assert "user_404" in response.json()["detail"]
    body = {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 1}]}
    bad = {**TORONTO, "postal_code": ""}
    response = await client.post("/orders/create_order", json={**body, "shipping_address": bad})
    assert response.status_code == 422
    assert "postal_code" in response.json()["detail"]


async def test_couriers_are_listed(client: httpx.AsyncClient) -> None:
    response = await client.get("/couriers")
    assert response.status_code == 200
    listed = response.json()["couriers"]
    assert {
        "name": "Toronto Bike Couriers",
        "country": "CA",
        "province": "ON",
        "city": "Toronto",
    } in listed
    assert listed[-1] == {"name": "Canada Post", "country": "CA", "province": None, "city": None}


@contextlib.asynccontextmanager
async def rabbit_app(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    from checkout.settings import Settings

    async with fresh_rabbit_vhost("payl") as amqp:
        url = f"sqlite:///{tmp_path / 'sagaway.db'}"
        settings = Settings(
            database_url=url,
            store_url=url,
            demo=True,
            worker_id="e2e",
            events="rabbitmq",
            rabbitmq_url=amqp,
        )
        application: FastAPI = create_app(settings)
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://checkout.test") as c:
                yield c


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("path", ["happy", "no_courier"])
async def test_over_rabbitmq(path: str, backend: str, tmp_path: Path) -> None:
    async with rabbit_app(tmp_path) as client:
        await (happy_path if path == "happy" else no_courier_path)(client)


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_orchestrated_payment_times_out(backend: str, tmp_path: Path) -> None:
    """The order-process saga's wait times out on the engine's durable timer (a 1 s payment
    timeout here): it compensates, cancelling the payment and the order."""
    from checkout.settings import Settings

    url = f"sqlite:///{tmp_path / 'sagaway.db'}"
    settings = Settings(
        database_url=url, store_url=url, demo=True, worker_id="e2e", payment_timeout_seconds=1
    )
    application: FastAPI = create_app(settings)
    async with application.router.lifespan_context(application):
        services: Services = application.state.services
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://checkout.test") as c:
            before = await balances(c)
            order = await create(c, TORONTO, "orchestration")
            record = await services.engine.wait(order["saga_id"], 30)
            assert str(record.status) == "COMPENSATED"
            shown = (await c.get(f"/orders/{order['order_id']}")).json()
            assert shown["status"] == "cancelled"
            assert shown["reason"] == "payment not confirmed within 1 s"
            payment = (await c.get(f"/payments/{order['payment_id']}")).json()
            assert payment["status"] == "cancelled"
            late = await c.post("/payments/confirm", json={"payment_id": order["payment_id"]})
            assert late.status_code == 409
            assert await balances(c) == before


async def test_impossible_ids_are_not_found(client: httpx.AsyncClient) -> None:
    assert (await client.get("/payments/a%00b")).status_code == 404
    assert (await client.get("/orders/a%00b")).status_code == 404
    response = await client.post("/payments/confirm", json={"payment_id": "a\u0000b"})
    assert response.status_code == 422
