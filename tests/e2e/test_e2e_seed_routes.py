"""The seed services' routes as their READMEs promise them.

* Seed 000: ``POST /checkout`` with a client-chosen ``order_id`` (unique: the same id with the
  same body is the same order, with another body a 409); ``GET /saga/{order_id}`` says
  ``SKIPPED`` for participants a finished saga never reached.
* Seed 003: ``POST /checkout/{order_id}`` answers 200 on success, 400 with the error on failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from e2e_helpers import TRANSPORTS_SLOW, balances, inventory


@pytest.fixture(params=TRANSPORTS_SLOW)
def backend(request: pytest.FixtureRequest) -> str:
    """Every layout: embedded, and separate services over HTTP and RabbitMQ (see conftest)."""
    param: str = request.param
    return param


BUY_ONE = {"user_id": "user_1", "product_id": "product_1", "quantity": 1}

# Request validation and the API's documentation: the gateway answers before any database or
# service is asked; one layout is proof enough (the remote layouts' services cost seconds each).
REQUEST_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


async def test_checkout_accepts_a_client_chosen_order_id(client: httpx.AsyncClient) -> None:
    response = await client.post("/checkout", json={"order_id": "seed-order-1", **BUY_ONE})
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["order_id"] == "seed-order-1"
    assert data["status"] == "completed"
    fetched = (await client.get("/orders/seed-order-1")).json()
    assert fetched["saga_id"] == data["saga_id"]
    seed = (await client.get("/saga/seed-order-1")).json()
    assert seed["status"] == "SUCCEEDED"
    assert seed["saga_id"] == data["saga_id"]


async def test_same_order_id_and_body_is_the_same_order(client: httpx.AsyncClient) -> None:
    body = {"order_id": "seed-order-2", **BUY_ONE}
    first = await client.post("/checkout", json=body)
    again = await client.post("/checkout", json=body)
    assert again.status_code in (200, 201), again.text
    assert again.json()["order_id"] == "seed-order-2"
    assert again.json()["saga_id"] == first.json()["saga_id"]
    assert (await client.get("/sagas")).json()["total"] == 1
    assert (await balances(client))["user_1"] == 950.0  # charged once
    assert (await inventory(client))["product_1"] == 99


async def test_concurrent_first_requests_with_one_order_id_make_one_order(
    client: httpx.AsyncClient,
) -> None:
    body = {"order_id": "seed-race", **BUY_ONE}
    responses = await asyncio.gather(*(client.post("/checkout", json=body) for _ in range(8)))
    assert {r.status_code for r in responses} <= {200, 201}, [r.text for r in responses]
    assert len({r.json()["saga_id"] for r in responses}) == 1
    assert (await client.get("/sagas")).json()["total"] == 1
    assert (await balances(client))["user_1"] == 950.0


# Each change of the body, with the field the 409 names.
CONFLICTS = [
    ({"quantity": 2}, "items"),
    ({"user_id": "user_2"}, "customer"),
    ({"payment_method": "paypal"}, "payment_method"),
    ({"shipping_address": {"city": "Elsewhere"}}, "shipping_address"),
]


async def test_same_order_id_with_another_body_is_409(client: httpx.AsyncClient) -> None:
    # Every change against one first order (one gateway and its services per layout, not one
    # per change): each is refused on its own, and none adds an order or a charge.
    first = await client.post("/checkout", json={"order_id": "seed-order-3", **BUY_ONE})
    assert first.status_code == 201
    for change, mentions in CONFLICTS:
        response = await client.post(
            "/checkout", json={"order_id": "seed-order-3", **BUY_ONE, **change}
        )
        assert response.status_code == 409, (change, response.text)
        detail = response.json()["detail"]
        assert "seed-order-3" in detail
        assert mentions in detail, (change, detail)
    assert (await client.get("/sagas")).json()["total"] == 1
    assert (await balances(client))["user_1"] == 950.0


async def test_order_id_taken_by_orders_route_conflicts_too(client: httpx.AsyncClient) -> None:
    first = await client.post("/orders", json={"order_id": "mine", **BUY_ONE})
    assert first.status_code == 201
    assert first.json()["order_id"] == "mine"
    other = await client.post("/checkout", json={"order_id": "mine", **BUY_ONE, "quantity": 3})
    assert other.status_code == 409


@REQUEST_ONLY
@pytest.mark.parametrize("order_id", ["", "a/b", "x" * 65, "with space", "ü"])
async def test_bad_order_id_is_422(client: httpx.AsyncClient, order_id: str) -> None:
    response = await client.post("/checkout", json={"order_id": order_id, **BUY_ONE})
    assert response.status_code == 422, response.text
    assert "order_id" in response.json()["detail"]
    assert (await client.get("/orders")).json()["orders"] == []


async def test_seed_status_says_skipped_for_steps_never_reached(client: httpx.AsyncClient) -> None:
    # Out of stock: inventory fails, payment and shipping are never reached.
    response = await client.post(
        "/checkout", json={"user_id": "user_2", "product_id": "product_1", "quantity": 200}
    )
    data = response.json()
    assert data["status"] == "failed"
    seed = (await client.get(f"/saga/{data['order_id']}")).json()
    assert seed["status"] == "COMPENSATED"
    assert seed["inventory_status"] == "FAILED"
    assert seed["payment_status"] == "SKIPPED"
    assert seed["shipping_status"] == "SKIPPED"


async def _draft(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/orders", json={**body, "checkout": False})
    assert response.status_code == 201, response.text
    order_id: str = response.json()["order_id"]
    return order_id


async def test_checkout_of_a_draft_is_200_on_success(client: httpx.AsyncClient) -> None:
    order_id = await _draft(client, **BUY_ONE)
    response = await client.post(f"/checkout/{order_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    again = await client.post(f"/checkout/{order_id}")
    assert again.status_code == 200
    assert again.json()["saga_id"] == response.json()["saga_id"]
    assert (await client.get("/sagas")).json()["total"] == 1


async def test_checkout_of_a_draft_is_400_with_the_error_on_failure(
    client: httpx.AsyncClient,
) -> None:
    # user_3 has no deliverable address: shipping fails, payment and inventory are undone.
    order_id = await _draft(client, user_id="user_3", product_id="product_1", quantity=1)
    response = await client.post(f"/checkout/{order_id}")
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["detail"] == "Invalid shipping address"
    assert body["order"]["order_id"] == order_id
    assert body["order"]["status"] == "failed"
    steps = {s["name"]: s["status"] for s in body["order"]["steps"]}
    assert steps["ship_order"] == "FAILED"
    assert steps["process_payment"] == "COMPENSATED"
    again = await client.post(f"/checkout/{order_id}")
    assert again.status_code == 400  # the outcome, not whether this call started the saga
    assert (await client.get("/sagas")).json()["total"] == 1
    assert (await balances(client))["user_3"] == 200.0


async def test_checkout_of_a_draft_not_finished_in_time_is_202(client: httpx.AsyncClient) -> None:
    order_id = await _draft(client, **BUY_ONE)
    response = await client.post(f"/checkout/{order_id}", params={"wait": 0})
    assert response.status_code in (200, 202)  # 200 only if the saga beat the response
    if response.status_code == 202:
        assert response.headers["Location"] == f"/orders/{order_id}"


@REQUEST_ONLY
async def test_openapi_documents_the_checkout_route_codes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    responses = spec["paths"]["/checkout/{order_id}"]["post"]["responses"]
    assert {"200", "202", "400", "404"} <= set(responses)
    assert "201" not in responses
    assert "Location" in responses["202"].get("headers", {})
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CheckoutFailed"
    )
    assert "order_id" in spec["components"]["schemas"]["OrderRequest"]["properties"]


# Seed 002's README body, verbatim but for the demo's ids and prices.
SEED_002_BODY: dict[str, Any] = {
    "customer_id": "user_1",
    "items": [
        {"product_id": "product_1", "name": "Laptop stand", "price": 50.0, "quantity": 2},
        {"product_id": "product_2", "name": "USB-C cable", "price": 20.0, "quantity": 1},
    ],
    "shipping_address": {
        "street": "123 Main St",
        "city": "Toronto",
        "state": "ON",
        "postal_code": "M5H 2N2",
        "country": "CA",
    },
    "payment_method": "credit_card",
}


async def test_seed_002_body_is_accepted_as_its_readme_shows_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/orders", json=SEED_002_BODY)
    assert response.status_code == 201, response.text
    data = response.json()
    assert data["status"] == "completed"
    assert data["total"] == 120.0
    assert data["payment_method"] == "credit_card"
    assert data["shipping_address"]["province"] == "ON"
    assert (await balances(client))["user_1"] == 880.0


async def test_seed_002_readme_ids_fail_the_saga_not_the_request(
    client: httpx.AsyncClient,
) -> None:
    body = {**SEED_002_BODY, "customer_id": "cust123"}
    body["items"] = [
        {"product_id": "product1", "name": "Product 1", "price": 10.0, "quantity": 2},
    ]
    response = await client.post("/orders", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "failed"


async def test_a_client_price_other_than_the_catalogue_is_422_naming_both(
    client: httpx.AsyncClient,
) -> None:
    body = {**SEED_002_BODY, "items": [{**SEED_002_BODY["items"][0], "price": 10.0}]}
    before = await inventory(client)
    response = await client.post("/orders", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail == "price 10.00 of product_1 does not match its catalogue price 50.00"
    assert await inventory(client) == before
    assert (await client.get("/orders")).json()["orders"] == []


@REQUEST_ONLY
async def test_state_and_a_different_province_is_422(client: httpx.AsyncClient) -> None:
    address = {**SEED_002_BODY["shipping_address"], "province": "QC"}
    response = await client.post("/orders", json={**SEED_002_BODY, "shipping_address": address})
    assert response.status_code == 422
