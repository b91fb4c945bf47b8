"""Bad input is a 4xx with a ``{"detail": "..."}`` message, never a 500, and starts nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="module")


GOOD_ITEM = {"product_id": "product_1", "quantity": 1}

BAD_BODIES: list[tuple[str, Any, str]] = [
    ("unknown field", {"customer_id": "user_1", "items": [GOOD_ITEM], "coupon": "X"}, "coupon"),
    (
        "unknown item field",
        {"customer_id": "user_1", "items": [{**GOOD_ITEM, "price": 1}]},
        "price",
    ),
    (
        "quantity zero",
        {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 0}]},
        "greater than 0",
    ),
    ("negative quantity", {"user_id": "user_1", "product_id": "product_1", "quantity": -3}, ""),
    ("string quantity", {"user_id": "user_1", "product_id": "product_1", "quantity": "2"}, ""),
    ("fractional quantity", {"user_id": "user_1", "product_id": "product_1", "quantity": 1.5}, ""),
    ("empty items", {"customer_id": "user_1", "items": []}, "at least one item"),
    ("no items", {"customer_id": "user_1"}, "at least one item"),
    ("no customer", {"items": [GOOD_ITEM]}, "customer_id or user_id"),
    (
        "both customer and user",
        {"customer_id": "user_1", "user_id": "user_2", "items": [GOOD_ITEM]},
        "exactly one",
    ),
    (
        "items and short form",
        {"user_id": "user_1", "items": [GOOD_ITEM], "product_id": "product_1", "quantity": 1},
        "not both",
    ),
    ("short form without quantity", {"user_id": "user_1", "product_id": "product_1"}, "quantity"),
    ("empty product id", {"user_id": "user_1", "product_id": "", "quantity": 1}, ""),
    ("huge id", {"user_id": "u" * 500, "product_id": "product_1", "quantity": 1}, ""),
    ("not an object", [1, 2, 3], ""),
    ("null", None, ""),
    (
        "sub-cent amount",
        {"user_id": "user_1", "product_id": "product_1", "quantity": 1, "amount": "50.001"},
        "",
    ),
    (
        "bad address field",
        {
            "user_id": "user_1",
            "product_id": "product_1",
            "quantity": 1,
            "shipping_address": {"planet": "Mars"},
        },
        "planet",
    ),
]


@pytest.mark.parametrize(("case", "body", "mentions"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_bodies_are_422(
    module_client: httpx.AsyncClient, case: str, body: Any, mentions: str
) -> None:
    for path in ("/orders", "/checkout"):
        response = await module_client.post(path, json=body)
        assert response.status_code == 422, (case, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str)
        assert detail
        assert mentions in detail
    assert (await module_client.get("/orders")).json()["orders"] == []


async def test_amount_mismatch_is_422_and_creates_nothing(module_client: httpx.AsyncClient) -> None:
    response = await module_client.post(
        "/orders",
        json={"user_id": "user_1", "product_id": "product_1", "quantity": 2, "amount": 99.99},
    )
    assert response.status_code == 422
    assert response.json() == {"detail": "amount 99.99 does not match the order total 100.00"}
    assert (await module_client.get("/orders")).json()["orders"] == []
    assert (await module_client.get("/sagas")).json()["total"] == 0


@pytest.mark.parametrize("payload", [b"{not json", b'{"customer_id": ', b"\xff\xfe"])
async def test_malformed_json_is_400(module_client: httpx.AsyncClient, payload: bytes) -> None:
    response = await module_client.post(
        "/orders", content=payload, headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (400, 422)
    assert response.json()["detail"]


async def test_malformed_json_without_content_type_is_4xx(module_client: httpx.AsyncClient) -> None:
    response = await module_client.post("/orders", content=b"{oops")
    assert 400 <= response.status_code < 500
    assert response.json()["detail"]


async def test_huge_body_is_413(module_client: httpx.AsyncClient) -> None:
    items = [{"product_id": "product_1", "quantity": 1}] * 5000
    response = await module_client.post("/orders", json={"customer_id": "user_1", "items": items})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"]


async def test_huge_chunked_body_is_413(module_client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(100):
            yield b"x" * 1024

    response = await module_client.post(
        "/orders", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


async def test_too_many_items_is_422(module_client: httpx.AsyncClient) -> None:
    items = [{"product_id": "product_1", "quantity": 1}] * 101
    response = await module_client.post("/orders", json={"customer_id": "user_1", "items": items})
    assert response.status_code == 422


@pytest.mark.parametrize("wait", ["-1", "61", "abc"])
async def test_wait_out_of_range_is_422(module_client: httpx.AsyncClient, wait: str) -> None:
    response = await module_client.post(
        "/orders", params={"wait": wait}, json={"user_id": "user_1", **GOOD_ITEM}
    )
    assert response.status_code == 422
    assert "wait" in response.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/orders", {"limit": 0}),
        ("/orders", {"limit": 100000}),
        ("/orders", {"offset": -1}),
        ("/orders", {"status": "shipped"}),
        ("/sagas", {"status": "DONE"}),
        ("/sagas", {"limit": "x"}),
    ],
)
async def test_bad_query_parameters_are_422(
    module_client: httpx.AsyncClient, path: str, params: dict[str, Any]
) -> None:
    response = await module_client.get(path, params=params)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)


async def test_unknown_routes_and_methods(module_client: httpx.AsyncClient) -> None:
    assert (await module_client.get("/nope")).json() == {"detail": "Not Found"}
    response = await module_client.delete("/orders")
    assert response.status_code == 405
    assert response.json()["detail"]


async def test_bad_idempotency_key_is_422(module_client: httpx.AsyncClient) -> None:
    response = await module_client.post(
        "/orders",
        json={"user_id": "user_1", **GOOD_ITEM},
        headers={"Idempotency-Key": "k" * 300},
    )
    assert response.status_code == 422
