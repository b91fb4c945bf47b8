"""HTTP edges a new user trips over: the body's content type, strict booleans, long ids echoed
in 404s, and HEAD. One app per backend for the module (``module_client``): every test but the
one that creates orders changes nothing; that one has its own app (``client``)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="module")

BUY_ONE = {"user_id": "user_1", "product_id": "product_1", "quantity": 1}
JSON_BODY = b'{"user_id": "user_1", "product_id": "product_1", "quantity": 1}'


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("path", ["/orders", "/checkout"])
async def test_body_that_is_not_declared_json_says_which_type_is_expected(
    module_client: httpx.AsyncClient, path: str, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = await module_client.post(path, content=JSON_BODY, headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]
    assert (await module_client.get("/orders")).json()["orders"] == []


# Its own app: it creates orders, which the other tests check were not created.
@pytest.mark.asyncio(loop_scope="function")
async def test_json_content_types_are_accepted(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json", "application/json; charset=utf-8"):
        response = await client.post(
            "/orders", content=JSON_BODY, headers={"content-type": content_type}
        )
        assert response.status_code == 201, response.text


async def test_missing_body_is_still_422(module_client: httpx.AsyncClient) -> None:
    response = await module_client.post("/orders")
    assert response.status_code == 422
    assert "body" in response.json()["detail"]


@pytest.mark.parametrize("value", ["no", "false", 0, "yes", 1, "true", None])
async def test_checkout_flag_must_be_a_json_boolean(
    module_client: httpx.AsyncClient, value: object
) -> None:
    response = await module_client.post("/orders", json={**BUY_ONE, "checkout": value})
    assert response.status_code == 422, response.text
    assert "checkout" in response.json()["detail"]
    assert (await module_client.get("/orders")).json()["orders"] == []


@pytest.mark.parametrize(
    ("method", "path", "prefix"),
    [
        ("GET", "/orders/{}", "Order "),
        ("GET", "/saga/{}", "Order "),
        ("POST", "/checkout/{}", "Order "),
        ("GET", "/sagas/{}", "Saga "),
    ],
)
async def test_404_truncates_a_long_echoed_id(
    module_client: httpx.AsyncClient, method: str, path: str, prefix: str
) -> None:
    long_id = "x" * 5000
    response = await module_client.request(method, path.format(long_id))
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail == f"{prefix}{'x' * 64}… not found"
    short = await module_client.request(method, path.format("nope"))
    assert short.json()["detail"] == f"{prefix}nope not found"


@pytest.mark.parametrize("path", ["/", "/health", "/orders", "/docs", "/orders/nope"])
async def test_head_answers_like_get_without_a_body(
    module_client: httpx.AsyncClient, path: str
) -> None:
    got = await module_client.get(path)
    head = await module_client.head(path)
    assert head.status_code == got.status_code
    assert head.headers.get("content-type") == got.headers.get("content-type")
    assert head.headers.get("location") == got.headers.get("location")
    assert head.content == b""


async def test_head_of_a_post_only_route_is_405(module_client: httpx.AsyncClient) -> None:
    response = await module_client.head("/checkout")
    assert response.status_code == 405
    assert "POST" in response.headers["allow"]
