"""The four classic checkout scenarios over HTTP, with exact balance and stock deltas, on every
layout: embedded (SQLite, PostgreSQL) and payment, inventory and shipping as separate services
over HTTP and over RabbitMQ (``e2e_helpers.TRANSPORTS``). Money and units are conserved across
the services' databases: read from their own APIs (``RemoteShop.totals``)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from e2e_helpers import TRANSPORTS, balances, inventory, order, steps

from checkout.bootstrap import Services
from checkout.domain.demo import demo_total_money_cents, demo_total_units


@pytest.fixture(params=TRANSPORTS)
def backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


async def _conserved(services: Services) -> None:
    totals = await services.participants.shop.totals()
    assert totals.money_cents == demo_total_money_cents()
    assert totals.units == demo_total_units()


async def test_happy_path_charges_and_ships(client: httpx.AsyncClient, services: Services) -> None:
    assert await balances(client) == {"user_1": 1000.0, "user_2": 500.0, "user_3": 200.0}
    assert (await inventory(client))["product_1"] == 100

    data = await order(
        client, customer_id="user_1", items=[{"product_id": "product_1", "quantity": 2}]
    )

    assert data["status"] == "completed"
    assert data["saga_status"] == "SUCCEEDED"
    assert data["error"] is None
    assert Decimal(str(data["total"])) == Decimal("100.00")
    assert steps(data) == {
        "validate_order": ("SUCCEEDED", None),
        "reserve_inventory": ("SUCCEEDED", None),
        "process_payment": ("SUCCEEDED", None),
        "ship_order": ("SUCCEEDED", None),
    }
    assert (await balances(client))["user_1"] == 900.0
    assert (await inventory(client))["product_1"] == 98
    products = {p["product_id"]: p for p in (await client.get("/products")).json()["products"]}
    assert products["product_1"] == {
        "product_id": "product_1",
        "name": products["product_1"]["name"],
        "price": 50.0,
        "stock": 98,
        "reserved": 0,
        "shipped": 2,
    }
    fetched = (await client.get(f"/orders/{data['order_id']}")).json()
    assert fetched["status"] == "completed"
    assert fetched["saga_id"] == data["saga_id"]
    assert fetched["items"] == [
        {"product_id": "product_1", "quantity": 2, "unit_price": 50.0, "line_total": 100.0}
    ]
    assert fetched["shipping_address"]["city"] == "Toronto"
    row = await services.participants.orders.get_order(data["order_id"])
    assert row is not None
    assert row.status == "completed"  # the durable mirror, not only the derived view
    await _conserved(services)


async def test_inventory_failure_changes_nothing(
    client: httpx.AsyncClient, services: Services
) -> None:
    data = await order(
        client, customer_id="user_1", items=[{"product_id": "product_1", "quantity": 200}]
    )

    assert data["status"] == "failed"
    assert data["saga_status"] == "COMPENSATED"
    assert data["error"] == "Insufficient inventory"
    assert steps(data)["reserve_inventory"] == ("FAILED", "Insufficient inventory")
    assert steps(data)["process_payment"][0] == "SKIPPED"
    assert (await balances(client))["user_1"] == 1000.0
    assert (await inventory(client))["product_1"] == 100
    await _conserved(services)


async def test_payment_failure_releases_inventory(
    client: httpx.AsyncClient, services: Services
) -> None:
    data = await order(client, user_id="user_3", product_id="product_1", quantity=10)

    assert data["status"] == "failed"
    assert data["saga_status"] == "COMPENSATED"
    assert data["error"] == "Insufficient funds"
    assert steps(data) == {
        "validate_order": ("SUCCEEDED", None),
        "reserve_inventory": ("COMPENSATED", None),
        "process_payment": ("FAILED", "Insufficient funds"),
        "ship_order": ("SKIPPED", None),
    }
    assert (await balances(client))["user_3"] == 200.0
    assert (await inventory(client))["product_1"] == 100
    seed = (await client.get(f"/saga/{data['order_id']}")).json()
    assert seed == {
        "order_id": data["order_id"],
        "saga_id": data["saga_id"],
        "status": "COMPENSATED",
        "inventory_status": "COMPENSATED",
        "payment_status": "FAILED",
        "shipping_status": "SKIPPED",
    }
    await _conserved(services)


async def test_shipping_failure_refunds_and_releases(
    client: httpx.AsyncClient, services: Services
) -> None:
    data = await order(client, "/checkout", user_id="user_3", product_id="product_1", quantity=1)

    assert data["status"] == "failed"
    assert data["saga_status"] == "COMPENSATED"
    assert data["error"] == "Invalid shipping address"
    assert steps(data) == {
        "validate_order": ("SUCCEEDED", None),
        "reserve_inventory": ("COMPENSATED", None),
        "process_payment": ("COMPENSATED", None),
        "ship_order": ("FAILED", "Invalid shipping address"),
    }
    assert (await balances(client))["user_3"] == 200.0
    assert (await inventory(client))["product_1"] == 100
    seed = (await client.get(f"/saga/{data['order_id']}")).json()
    assert seed["status"] == "COMPENSATED"
    assert seed["inventory_status"] == "COMPENSATED"
    assert seed["payment_status"] == "COMPENSATED"
    assert seed["shipping_status"] == "FAILED"

    saga = (await client.get(f"/sagas/{data['saga_id']}")).json()
    assert saga["status"] == "COMPENSATED"
    assert saga["order_id"] == data["order_id"]
    rows = [(s["name"], s["phase"], s["status"]) for s in saga["steps"]]
    assert rows == [
        ("validate_order", "forward", "SUCCEEDED"),
        ("reserve_inventory", "forward", "SUCCEEDED"),
        ("process_payment", "forward", "SUCCEEDED"),
        ("ship_order", "forward", "FAILED"),
        ("process_payment", "compensation", "COMPENSATED"),
        ("reserve_inventory", "compensation", "COMPENSATED"),
    ]
    first = saga["steps"][0]
    assert first["attempts"] == 1
    assert first["started_at"].endswith("Z") or "+00:00" in first["started_at"]
    assert first["finished_at"] is not None
    events = [e["type"] for e in saga["history"]]
    assert events[0] == "saga_started"
    assert events[-1] == "saga_compensated"
    assert all(e["at"] for e in saga["history"])
    await _conserved(services)


async def test_unknown_user_and_product_fail_their_saga(client: httpx.AsyncClient) -> None:
    data = await order(client, user_id="nobody", product_id="product_1", quantity=1)
    assert (data["status"], data["error"]) == ("failed", "User not found")
    assert steps(data)["validate_order"] == ("FAILED", "User not found")

    data = await order(client, user_id="user_1", product_id="no_such_product", quantity=1)
    assert (data["status"], data["error"]) == ("failed", "Product not found")
    assert data["saga_status"] == "COMPENSATED"


async def test_listings_newest_first_with_filters(client: httpx.AsyncClient) -> None:
    ok = await order(client, user_id="user_1", product_id="product_2", quantity=1)
    bad = await order(client, user_id="user_1", product_id="product_2", quantity=999)

    listed = (await client.get("/orders")).json()
    assert [o["order_id"] for o in listed["orders"]] == [bad["order_id"], ok["order_id"]]
    failed = (await client.get("/orders", params={"status": "failed"})).json()["orders"]
    assert [o["order_id"] for o in failed] == [bad["order_id"]]
    page = (await client.get("/orders", params={"limit": 1, "offset": 1})).json()["orders"]
    assert [o["order_id"] for o in page] == [ok["order_id"]]

    sagas = (await client.get("/sagas")).json()
    assert sagas["total"] == 2
    assert [s["saga_id"] for s in sagas["sagas"]] == [bad["saga_id"], ok["saga_id"]]
    done = (await client.get("/sagas", params={"status": "SUCCEEDED"})).json()
    assert [s["saga_id"] for s in done["sagas"]] == [ok["saga_id"]]


async def test_amount_matching_the_total_is_accepted(client: httpx.AsyncClient) -> None:
    data = await order(
        client,
        customer_id="user_2",
        items=[{"product_id": "product_2", "quantity": 3}],
        amount="60.00",
    )
    assert data["status"] == "completed"
    assert (await balances(client))["user_2"] == 440.0


async def test_reset_restores_every_service(client: httpx.AsyncClient, services: Services) -> None:
    await order(client, customer_id="user_1", items=[{"product_id": "product_2", "quantity": 3}])
    assert (await inventory(client))["product_2"] == 47
    response = await client.post("/reset", json={})
    assert response.status_code == 200, response.text
    assert response.json()["inventory"]["product_2"] == 50
    assert (await balances(client))["user_1"] == 1000.0
    products = {p["product_id"]: p for p in (await client.get("/products")).json()["products"]}
    assert (products["product_2"]["reserved"], products["product_2"]["shipped"]) == (0, 0)
    assert (await client.get("/orders")).json()["orders"] == []
    await _conserved(services)
