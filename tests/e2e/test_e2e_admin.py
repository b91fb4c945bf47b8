"""``SAGAWAY_ADMIN_TOKEN``: operator actions and reads of other customers' data need
``Authorization: Bearer <token>``; with no token they are refused outside demo mode (with how
to enable them) and open in demo mode. ``POST /reset`` also wants a JSON content type, which no
cross-site form can send. Customers' own routes stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from checkout.api import create_app
from checkout.cli import app as cli
from checkout.settings import Settings

TOKEN = "s3cret-operator-token"

# (method, path, body): every route that acts as the operator or shows other customers' data.
ADMIN_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/accounts", None),
    ("GET", "/balances", None),
    ("GET", "/orders", None),
    ("GET", "/sagas", None),
    ("GET", "/sagas/some-saga", None),
    ("POST", "/sagas/some-saga/retry", {}),
    ("POST", "/sagas/some-saga/cancel", {}),
    ("POST", "/sagas/some-saga/pin", {}),
    ("DELETE", "/sagas/some-saga/pin", None),
    ("POST", "/reset", {}),
    # The web UI shows the same data and acts the same way.
    ("GET", "/", None),
    ("GET", "/shop/orders", None),
    ("GET", "/ui/sagas", None),
    ("POST", "/ui/sagas/some-saga/retry", {}),
    ("POST", "/ui/sagas/some-saga/pin", {}),
    ("DELETE", "/ui/sagas/some-saga/pin", None),
]
ADMIN_IDS = [f"{m} {p}" for m, p, _ in ADMIN_ROUTES]
ORDER = {"user_id": "user_1", "product_id": "product_1", "quantity": 1}

Serve = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def backend() -> str:
    return "sqlite"  # authorization does not depend on the database


@pytest.fixture
def serve(settings: Settings) -> Serve:
    """``async with serve(demo=..., admin_token=...) as client``: the app with those settings."""

    @asynccontextmanager
    async def serving(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        application = create_app(Settings(**{**settings.model_dump(), **overrides}))
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                yield client

    return serving


async def call(
    client: httpx.AsyncClient, method: str, path: str, body: Any, **headers: str
) -> httpx.Response:
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES, ids=ADMIN_IDS)
async def test_without_a_token_admin_routes_are_refused_outside_demo_mode(
    serve: Serve, method: str, path: str, body: Any
) -> None:
    async with serve(demo=False) as client:
        response = await call(client, method, path, body)
    assert response.status_code == 403, response.text
    assert "SAGAWAY_ADMIN_TOKEN" in response.json()["detail"]


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES, ids=ADMIN_IDS)
async def test_with_a_token_admin_routes_need_it(
    serve: Serve, demo: bool, method: str, path: str, body: Any
) -> None:
    async with serve(demo=demo, admin_token=TOKEN) as client:
        missing = await call(client, method, path, body)
        wrong = await call(client, method, path, body, authorization=f"Bearer {TOKEN}x")
        basic = await call(client, method, path, body, authorization=f"Basic {TOKEN}")
        right = await call(client, method, path, body, authorization=f"Bearer {TOKEN}")
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in refused.json()["detail"]
    # Past the check: what the route itself answers (an unknown saga is 404, reset outside
    # demo mode is 403 for another reason).
    assert right.status_code not in (401,), right.text
    if right.status_code == 403:
        assert (path, demo) == ("/reset", False)
    else:
        assert right.status_code in (200, 404), right.text


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES, ids=ADMIN_IDS)
async def test_demo_mode_without_a_token_stays_open(
    serve: Serve, method: str, path: str, body: Any
) -> None:
    async with serve(demo=True) as client:
        response = await call(client, method, path, body)
    assert response.status_code in (200, 404), response.text


async def test_customer_routes_need_no_token(serve: Serve) -> None:
    async with serve(demo=False) as client:
        placed = await client.post("/orders", json=ORDER)
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["order_id"]
        for path in (f"/orders/{order_id}", f"/saga/{order_id}", "/inventory", "/products"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "text/plain"},
        {"content-type": "multipart/form-data; boundary=x"},
    ],
    ids=["none", "form", "text", "multipart"],
)
async def test_reset_refuses_a_request_a_cross_site_form_could_send(
    serve: Serve, headers: dict[str, str]
) -> None:
    async with serve(demo=True) as client:
        assert (await client.post("/orders", json=ORDER)).status_code == 201
        response = await client.post("/reset", content=b"", headers=headers)
        assert response.status_code == 415, response.text
        assert "application/json" in response.json()["detail"]
        balance = (await client.get("/balances")).json()["balances"]["user_1"]
        assert balance == 950.0  # the order's charge stands: nothing was reset
        unknown = await client.post("/reset", json={"restock": True})
        assert unknown.status_code == 422, unknown.text  # it takes nothing; says so
        ok = await client.post("/reset", headers={"content-type": "application/json"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["balances"]["user_1"] == 1000.0


async def test_openapi_marks_admin_routes_with_the_bearer_scheme(serve: Serve) -> None:
    async with serve(demo=True) as client:
        document = (await client.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    paths = document["paths"]
    for method, path, _ in ADMIN_ROUTES:
        path = path.replace("some-saga", "{saga_id}")
        if path == "/" or path.startswith(("/ui/", "/shop/")):
            continue  # the web UI is not in the API's document
        assert paths[path][method.lower()].get("security"), (method, path)
    assert not paths["/orders"]["post"].get("security")
    assert not paths["/orders/{order_id}"]["get"].get("security")


def test_an_open_demo_is_only_served_on_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'open.db'}"
    monkeypatch.setenv("SAGAWAY_DATABASE_URL", url)
    monkeypatch.setenv("SAGAWAY_STORE_URL", url)
    monkeypatch.setenv("SAGAWAY_DEMO", "true")
    monkeypatch.delenv("SAGAWAY_ADMIN_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "SAGAWAY_ADMIN_TOKEN" in result.output
    assert "loopback" in result.output


def test_a_short_token_is_refused_and_an_empty_one_is_none() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(admin_token="short")
    assert Settings(admin_token="").admin_token is None
    assert Settings(admin_token=TOKEN).admin_token is not None
