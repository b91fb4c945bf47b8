"""Input a fuzzer or an attacker sends: NUL characters, absurd offsets. On every backend (the
``backend`` fixture runs each test on SQLite and on PostgreSQL, which cannot store NUL in text)
the answer is a 4xx with a message, never a 5xx, and nothing is recorded."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="module")


NUL = "\u0000"

NUL_BODIES: list[tuple[str, dict[str, Any]]] = [
    (
        "customer_id",
        {"customer_id": f"a{NUL}", "items": [{"product_id": "product_1", "quantity": 1}]},
    ),
    ("user_id", {"user_id": f"user_1{NUL}", "product_id": "product_1", "quantity": 1}),
    ("product_id", {"user_id": "user_1", "product_id": f"product{NUL}1", "quantity": 1}),
    (
        "item product_id",
        {"customer_id": "user_1", "items": [{"product_id": f"{NUL}", "quantity": 1}]},
    ),
    (
        "payment_method",
        {"user_id": "user_1", "product_id": "product_1", "quantity": 1, "payment_method": NUL},
    ),
    (
        "address",
        {
            "user_id": "user_1",
            "product_id": "product_1",
            "quantity": 1,
            "shipping_address": {"street": f"1 Main{NUL}St", "city": "Toronto"},
        },
    ),
]


@pytest.mark.parametrize(("field", "body"), NUL_BODIES, ids=[c[0] for c in NUL_BODIES])
async def test_nul_in_a_body_string_is_422(
    module_client: httpx.AsyncClient, field: str, body: dict[str, Any]
) -> None:
    for path in ("/orders", "/checkout"):
        response = await module_client.post(path, json=body)
        assert response.status_code == 422, (field, response.text)
        assert "NUL" in response.json()["detail"] or "control" in response.json()["detail"]
    assert (await module_client.get("/orders")).json()["orders"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/orders/a%00b",
        "/sagas/a%00b",
        "/saga/a%00b",
        "/orders/%00",
    ],
)
async def test_nul_in_an_id_is_404(module_client: httpx.AsyncClient, path: str) -> None:
    response = await module_client.get(path)
    assert response.status_code == 404, response.text
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/checkout/a%00b", "/sagas/a%00b/retry", "/sagas/a%00b/cancel"])
async def test_nul_in_an_id_of_an_action_is_404(
    module_client: httpx.AsyncClient, path: str
) -> None:
    response = await module_client.post(path, headers={"content-type": "application/json"})
    assert response.status_code == 404, response.text


async def test_nul_in_an_idempotency_key_is_422(module_client: httpx.AsyncClient) -> None:
    response = await module_client.post(
        "/orders",
        json={"user_id": "user_1", "product_id": "product_1", "quantity": 1},
        headers={"Idempotency-Key": "k\x00y"},
    )
    assert response.status_code == 422, response.text
    assert "Idempotency-Key" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/orders", "/sagas"])
@pytest.mark.parametrize(
    "offset", ["9223372036854775808", "799704399253550546288640", "1000000001"]
)
async def test_offsets_beyond_the_bound_are_422(
    module_client: httpx.AsyncClient, path: str, offset: str
) -> None:
    response = await module_client.get(path, params={"offset": offset})
    assert response.status_code == 422, response.text
    assert "offset" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/orders", "/sagas"])
async def test_the_largest_offset_allowed_answers_an_empty_page(
    module_client: httpx.AsyncClient, path: str
) -> None:
    response = await module_client.get(path, params={"offset": 10**9})
    assert response.status_code == 200, response.text
    assert response.json()["offset"] == 10**9
