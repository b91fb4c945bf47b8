"""``POST /orders``' fast path (``checkout.api.fastpath``) answers as the FastAPI route does.

Each request of the corpus is sent twice to one app: with the fast path on, and with it off
(every request through FastAPI). The answers must be the same: status, headers and body, once
what differs between two orders by nature (ids, times) is left out. The corpus holds what the
fast path takes (plain orders, keys, ``wait``), what it must hand on (everything FastAPI
refuses or reads in a way the fast path does not), and the errors placing an order raises
(answered by the app's handlers either way).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from e2e_helpers import asgi_client, running_app
from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute

from checkout.api import app as checkout_app
from checkout.api import fastpath
from checkout.api.deps import DEFAULT_WAIT_SECONDS, IdempotencyKey, Wait
from checkout.api.fastpath import OrderFastPath
from checkout.api.routes import orders
from checkout.api.schemas import OrderRequest
from checkout.settings import Settings


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the fast path is the route's, the same on every backend


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as application:
        yield application


def fast_path_of(app: FastAPI) -> OrderFastPath:
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, OrderFastPath):
        layer = layer.app
    return layer


ORDER = {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 1}]}
JSON = {"content-type": "application/json"}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


# (name, query, headers, body): "{tag}" is replaced by "fast" / "slow" (same length), so ids
# and keys differ between the two runs and the answers compare once the tag is left out.
CORPUS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("plain", "", JSON, body(ORDER)),
    ("short form", "", JSON, body({"user_id": "user_3", "product_id": "product_1", "quantity": 1})),
    ("unknown customer", "", JSON, body({**ORDER, "customer_id": "nobody"})),
    ("draft", "", JSON, body({**ORDER, "checkout": False})),
    ("own id", "", JSON, body({**ORDER, "order_id": "id-{tag}-1"})),
    ("address", "", JSON, body({**ORDER, "shipping_address": {"city": "Oslo", "state": "O"}})),
    ("amount", "", JSON, body({**ORDER, "amount": 50})),
    ("wrong amount", "", JSON, body({**ORDER, "amount": 51})),
    (
        "wrong price",
        "",
        JSON,
        body({**ORDER, "items": [{"product_id": "product_1", "quantity": 1, "price": 1}]}),
    ),
    (
        "quantity 2.0",
        "",
        JSON,
        b'{"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 2.0}]}',
    ),
    ("wait=0.5", "wait=0.5", JSON, body(ORDER)),
    ("wait=60", "wait=60", JSON, body(ORDER)),
    ("wait=60.0", "wait=60.0", JSON, body(ORDER)),
    ("wait=60.001", "wait=60.001", JSON, body(ORDER)),
    ("wait=61", "wait=61", JSON, body(ORDER)),
    ("wait=-1", "wait=-1", JSON, body(ORDER)),
    ("wait=1e1", "wait=1e1", JSON, body(ORDER)),
    ("wait=nan", "wait=nan", JSON, body(ORDER)),
    ("wait=inf", "wait=inf", JSON, body(ORDER)),
    ("wait= 1", "wait=%201", JSON, body(ORDER)),
    ("wait=", "wait=", JSON, body(ORDER)),
    ("wait twice", "wait=1&wait=70", JSON, body(ORDER)),
    ("other query", "x=1", JSON, body(ORDER)),
    ("wait and other", "wait=1&x=1", JSON, body(ORDER)),
    ("key", "", {**JSON, "Idempotency-Key": "k-{tag}-1"}, body(ORDER)),
    ("key 200", "", {**JSON, "Idempotency-Key": "{tag}" + "k" * 196}, body(ORDER)),
    ("key 201", "", {**JSON, "Idempotency-Key": "{tag}" + "k" * 197}, body(ORDER)),
    ("key inner space", "", {**JSON, "Idempotency-Key": "k {tag}"}, body(ORDER)),
    ("key control", "", {**JSON, "Idempotency-Key": "k\x01{tag}"}, body(ORDER)),
    ("key latin-1", "", {**JSON, "Idempotency-Key": "k\xe9{tag}"}, body(ORDER)),
    ("charset", "", {"content-type": "application/json; charset=utf-8"}, body(ORDER)),
    ("upper case type", "", {"content-type": "Application/JSON"}, body(ORDER)),
    ("+json", "", {"content-type": "application/merge-patch+json"}, body(ORDER)),
    ("text/plain", "", {"content-type": "text/plain"}, body(ORDER)),
    ("no content type", "", {}, body(ORDER)),
    ("empty body", "", JSON, b""),
    ("not JSON", "", JSON, b"{"),
    ("not UTF-8", "", JSON, b'{"customer_id": "\xff"}'),
    ("null", "", JSON, b"null"),
    ("array", "", JSON, b"[]"),
    ("empty object", "", JSON, b"{}"),
    ("unknown field", "", JSON, body({**ORDER, "colour": "red"})),
    (
        "quantity 0",
        "",
        JSON,
        body({**ORDER, "items": [{"product_id": "product_1", "quantity": 0}]}),
    ),
    (
        "quantity true",
        "",
        JSON,
        body({**ORDER, "items": [{"product_id": "product_1", "quantity": True}]}),
    ),
    (
        "NaN amount",
        "",
        JSON,
        b'{"customer_id": "user_1", "amount": NaN, "items": '
        b'[{"product_id": "product_1", "quantity": 1}]}',
    ),
    ("both customers", "", JSON, body({**ORDER, "user_id": "user_1"})),
    ("too large", "", JSON, body({**ORDER, "payment_method": "x" * 70_000})),
]


def _tagged(text: str, tag: str) -> str:
    return text.replace("{tag}", tag)


def _answer(response: httpx.Response, tag: str) -> tuple[int, dict[str, str], Any]:
    """What must be the same: the status, the headers (a ``Location``'s order id aside) and
    the body with the tag, ids and times of its order left out."""
    text = response.text.replace(tag, "TAG")
    headers = {k: v.replace(tag, "TAG") for k, v in response.headers.items()}
    headers.pop("content-length", None)
    try:
        document = json.loads(text)
    except ValueError:
        return response.status_code, headers, text
    if isinstance(document, dict) and "created_at" in document:
        order_id = document.pop("order_id")
        if not order_id.startswith("id-TAG"):  # a generated id, in Location too
            headers["location"] = headers.get("location", "").replace(order_id, "ID")
        for field in ("saga_id", "created_at", "updated_at"):
            document.pop(field)
    return response.status_code, headers, document


async def _send(
    client: httpx.AsyncClient, query: str, headers: dict[str, str], content: bytes, tag: str
) -> tuple[int, dict[str, str], Any]:
    sent = {k: _tagged(v, tag).encode("latin-1") for k, v in headers.items()}
    url = "/orders" + (f"?{query}" if query else "")
    response = await client.post(
        url, content=_tagged(content.decode("latin-1"), tag).encode("latin-1"), headers=sent
    )
    return _answer(response, tag)


async def test_every_request_is_answered_as_fastapi_answers_it(app: FastAPI) -> None:
    path = fast_path_of(app)
    async with asgi_client(app) as client:
        for name, query, headers, content in CORPUS:
            path.enabled = True
            fast = await _send(client, query, headers, content, "fast")
            path.enabled = False
            slow = await _send(client, query, headers, content, "slow")
            assert fast == slow, name
            # Sent again: a replay (key, own id) or a conflict, answered alike too.
            path.enabled = True
            fast = await _send(client, query, headers, content, "fast")
            path.enabled = False
            slow = await _send(client, query, headers, content, "slow")
            assert fast == slow, f"{name}, repeated"


async def test_a_key_reused_with_another_request_is_refused_alike(app: FastAPI) -> None:
    path = fast_path_of(app)
    async with asgi_client(app) as client:
        answers = []
        for enabled, tag in ((True, "fast"), (False, "slow")):
            path.enabled = enabled
            key = {**JSON, "Idempotency-Key": f"k-{tag}"}
            first = await client.post("/orders", content=body(ORDER), headers=key)
            assert first.status_code == 201
            other = {**ORDER, "items": [{"product_id": "product_1", "quantity": 2}]}
            answers.append(
                _answer(await client.post("/orders", content=body(other), headers=key), tag)
            )
        assert answers[0] == answers[1]
        assert answers[0][0] == 422


async def test_the_fast_path_takes_the_requests_it_can_read(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only the same answers: the fast path answers them (FastAPI's route is not run),
    and hands on what it cannot read."""
    taken: list[str] = []
    routed: list[str] = []

    def spy(into: list[str], place: Any) -> Any:
        async def placed(checkout: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
            into.append(body.customer)
            return await place(checkout, body, *args, **kwargs)

        return placed

    monkeypatch.setattr(fastpath, "place", spy(taken, fastpath.place))
    monkeypatch.setattr(orders, "place", spy(routed, orders.place))
    async with asgi_client(app) as client:
        placed = await client.post("/orders?wait=10", json=ORDER, headers={"Idempotency-Key": "k"})
        assert placed.status_code == 201
        assert placed.json()["status"] == "completed"
        charset = {"content-type": "application/json; charset=utf-8"}
        assert (
            await client.post("/orders", content=body(ORDER), headers=charset)
        ).status_code == 201
    assert (taken, routed) == (["user_1"], ["user_1"])


async def test_an_unexpected_error_is_a_500_either_way(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No handler takes it: it goes up to ``ServerErrorMiddleware`` from either path."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken")

    monkeypatch.setattr(fastpath, "place", broken)
    monkeypatch.setattr(orders, "place", broken)
    path = fast_path_of(app)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://checkout.test") as client:
        answers = []
        for enabled in (True, False):
            path.enabled = enabled
            response = await client.post("/orders", json=ORDER)
            answers.append((response.status_code, response.json()))
    assert answers == [(500, {"detail": "Internal server error"})] * 2


def post_orders_route() -> APIRoute:
    return next(
        route
        for route in orders.router.routes
        if isinstance(route, APIRoute) and route.path == "/orders" and "POST" in route.methods
    )


def test_the_route_as_declared_is_what_the_fast_path_reads() -> None:
    assert fastpath.refusal(post_orders_route()) is None


async def counted() -> None:
    """A dependency standing for an auth check added to the route some day."""


def test_a_dependency_anywhere_turns_the_fast_path_off() -> None:
    route = post_orders_route()
    guarded = APIRoute(
        "/orders", orders.create_order, methods=["POST"], dependencies=[Depends(counted)]
    )
    assert "dependencies" in (fastpath.refusal(guarded) or "")
    assert "dependencies" in (fastpath.refusal(route, [Depends(counted)]) or "")


def test_a_parameter_the_fast_path_does_not_read_turns_it_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def create_order(
        body: OrderRequest,
        request: Request,
        idempotency_key: IdempotencyKey = None,
        wait: Wait = DEFAULT_WAIT_SECONDS,
        coupon: str | None = None,
    ) -> None:
        """The route with one query parameter more."""

    monkeypatch.setattr(orders, "create_order", create_order)
    widened = APIRoute("/orders", create_order, methods=["POST"])
    assert "coupon" in (fastpath.refusal(widened) or "")
    other = APIRoute("/orders", post_orders_route().endpoint, methods=["POST"])
    assert "endpoint" in (fastpath.refusal(other) or "")


async def test_an_app_wide_dependency_is_run_by_fastapi_not_skipped(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An app declared with a dependency every route runs (an auth check, say): the fast path
    sees it at its first request, turns itself off and says so; FastAPI runs the dependency."""
    calls: list[str] = []

    async def audited(request: Request) -> None:
        calls.append(request.url.path)

    declared = functools.partial(checkout_app.FastAPIOffline, dependencies=[Depends(audited)])
    monkeypatch.setattr(checkout_app, "FastAPIOffline", declared)
    with caplog.at_level(logging.WARNING, logger="checkout.api"):
        async with running_app(settings) as app, asgi_client(app) as client:
            placed = await client.post("/orders?wait=10", json=ORDER)
            assert fast_path_of(app).enabled is False
    assert placed.status_code == 201
    assert placed.json()["status"] == "completed"
    assert calls == ["/orders"]
    assert any("fast path off" in record.getMessage() for record in caplog.records)
