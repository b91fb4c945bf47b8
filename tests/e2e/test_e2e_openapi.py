"""What the API says about itself: OPTIONS and 405 name every method a path allows, and the
OpenAPI document states the statuses and rules the routes really have (the fuzz stage in
``.ci/run`` holds the API to it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from e2e_helpers import shared_client

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"  # routing and the schema do not depend on the database


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """One app for the module: the tests read routes and the schema, and change nothing."""
    async with shared_client(backend, tmp_path_factory.mktemp("app")) as shared:
        yield shared


def methods(response: httpx.Response) -> set[str]:
    return {m.strip() for m in response.headers["allow"].split(",")}


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/orders", {"GET", "HEAD", "POST", "OPTIONS"}),
        ("/orders/ord_1", {"GET", "HEAD", "OPTIONS"}),
        ("/checkout", {"POST", "OPTIONS"}),
        ("/sagas/s1/retry", {"POST", "OPTIONS"}),
        ("/reset", {"POST", "OPTIONS"}),
    ],
)
async def test_options_answers_the_methods_a_path_allows(
    client: httpx.AsyncClient, path: str, allowed: set[str]
) -> None:
    response = await client.options(path)
    assert response.status_code == 204, response.text
    assert methods(response) == allowed


async def test_options_on_an_unknown_path_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.options("/nowhere")).status_code == 404


async def test_405_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    response = await client.delete("/orders")
    assert response.status_code == 405
    assert methods(response) == {"GET", "HEAD", "POST", "OPTIONS"}
    assert response.json()["detail"] == "Method Not Allowed"


async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


async def test_post_checkout_documents_201_and_202(client: httpx.AsyncClient) -> None:
    responses = (await openapi(client))["paths"]["/checkout"]["post"]["responses"]
    assert {"201", "202"} <= set(responses)
    assert "Location" in responses["202"].get("headers", {})


async def test_order_request_schema_states_exactly_one_customer(
    client: httpx.AsyncClient,
) -> None:
    schema = (await openapi(client))["components"]["schemas"]["OrderRequest"]
    rules = schema["allOf"]
    customer = next(r for r in rules if any("customer_id" in o["required"] for o in r["oneOf"]))
    assert [o["required"] for o in customer["oneOf"]] == [["customer_id"], ["user_id"]]
    assert "exactly one of customer_id or user_id" in schema["description"]


async def test_an_integral_number_is_an_integer_quantity(client: httpx.AsyncClient) -> None:
    # JSON Schema's "integer" includes 2.0; refusing what the schema promises breaks clients
    # whose JSON library writes every number as a float.
    body = {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 2.0}]}
    response = await client.post("/orders", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["items"][0]["quantity"] == 2
    short = {"user_id": "user_1", "product_id": "product_1", "quantity": 1.0}
    assert (await client.post("/orders", json=short)).status_code == 201


async def test_the_order_routes_matched_first_are_documented_once_in_their_place(
    client: httpx.AsyncClient,
) -> None:
    # create_app includes the order routes ahead of the others (outside the schema) so placing
    # an order is matched first; the document keeps its order: the pay-later routes, then the
    # orders, each operation once.
    document = await openapi(client)
    paths = list(document["paths"])
    assert paths.index("/orders/create_order") < paths.index("/orders")
    operations = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(operations) == len(set(operations))
    assert sum(1 for path in paths if path in ("/orders", "/orders/{order_id}")) == 2
