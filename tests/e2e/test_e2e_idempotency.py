"""An ``Idempotency-Key`` is bound to the request it was first sent with (its route and its
body, the customer included): the same request again replays the order (status code by the
order's state, header ``Idempotent-Replayed: true``); anything else under that key is a 422
that shows nothing of the first order. On SQLite and PostgreSQL (``backend``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from e2e_helpers import balances

from checkout.bootstrap import Services
from checkout.domain.models import OrderLine

ITEMS = [{"product_id": "product_1", "quantity": 2}]
FIRST = {"customer_id": "user_1", "items": ITEMS}
KEY = {"Idempotency-Key": "9b0c6c1e-5a1d-4b6f-bf7e-2d0c1f1a1a01"}

OTHER_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("another customer", {"customer_id": "user_3", "items": ITEMS}),
    (
        "another product",
        {"customer_id": "user_1", "items": [{**ITEMS[0], "product_id": "product_2"}]},
    ),
    ("another quantity", {"customer_id": "user_1", "items": [{**ITEMS[0], "quantity": 3}]}),
    (
        "another address",
        {**FIRST, "shipping_address": {"street": "1 Main St", "city": "Toronto"}},
    ),
    ("another payment method", {**FIRST, "payment_method": "paypal"}),
    ("a draft", {**FIRST, "checkout": False}),
]


@pytest.mark.parametrize(("case", "body"), OTHER_REQUESTS, ids=[c[0] for c in OTHER_REQUESTS])
async def test_a_key_reused_for_another_request_is_422_and_shows_nothing(
    client: httpx.AsyncClient, case: str, body: dict[str, Any]
) -> None:
    first = await client.post("/orders", json=FIRST, headers=KEY)
    assert first.status_code == 201, first.text
    reused = await client.post("/orders", json=body, headers=KEY)
    assert reused.status_code == 422, (case, reused.text)
    detail = reused.json()["detail"]
    assert "Idempotency-Key" in detail
    assert "different request" in detail
    assert first.json()["order_id"] not in reused.text
    assert "Nowhere" not in reused.text  # no address of anyone
    assert set(reused.json()) == {"detail"}
    assert len((await client.get("/orders")).json()["orders"]) == 1
    assert (await balances(client))["user_1"] == 900.0  # charged once
    assert (await balances(client))["user_3"] == 200.0  # never charged


async def test_the_same_request_replays_the_order_with_its_status(
    client: httpx.AsyncClient,
) -> None:
    first = await client.post("/orders", json=FIRST, headers=KEY)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    # The same request in its other spelling (user_id, the one-item short form) is the same.
    for body in (FIRST, {"user_id": "user_1", "product_id": "product_1", "quantity": 2}):
        again = await client.post("/orders", json=body, headers=KEY)
        assert again.status_code == 201, again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["order_id"] == first.json()["order_id"]
        assert again.json()["status"] == "completed"
    assert (await balances(client))["user_1"] == 900.0


async def test_a_replayed_draft_is_still_201(client: httpx.AsyncClient) -> None:
    draft = {**FIRST, "checkout": False}
    first = await client.post("/orders", json=draft, headers=KEY)
    again = await client.post("/orders", json=draft, headers=KEY)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["order_id"] == first.json()["order_id"]


async def test_a_key_is_bound_to_its_route(client: httpx.AsyncClient) -> None:
    assert (await client.post("/orders", json=FIRST, headers=KEY)).status_code == 201
    other_route = await client.post("/checkout", json=FIRST, headers=KEY)
    assert other_route.status_code == 422, other_route.text
    assert "different request" in other_route.json()["detail"]


async def test_an_order_keyed_before_fingerprints_is_matched_by_customer(
    client: httpx.AsyncClient, services: Services
) -> None:
    # As migration 0002 leaves an order recorded earlier: a key and no fingerprint.
    legacy, _ = await services.participants.orders.create_order(
        "user_1",
        [OrderLine(product_id="product_1", quantity=2)],
        idempotency_key=KEY["Idempotency-Key"],
    )
    assert legacy.request_fingerprint is None
    other = await client.post(
        "/orders", json={"customer_id": "user_3", "items": ITEMS}, headers=KEY
    )
    assert other.status_code == 422, other.text
    assert legacy.id not in other.text
    same = await client.post("/orders", json={**FIRST, "checkout": False}, headers=KEY)
    assert same.status_code == 201, same.text
    assert same.json()["order_id"] == legacy.id
    assert same.headers["idempotent-replayed"] == "true"
