"""Helpers shared by the e2e tests (imported as ``e2e_helpers``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from checkout.api import create_app
from checkout.bootstrap import Services
from checkout.settings import Settings
from servers import drop_pg_schema, pg_schema_url, postgres_check, require_server, unique_pg_schema

# The backends plus the remote transports, for modules that run on all of them (a module
# overrides the ``backend`` fixture with these params; see conftest).
TRANSPORTS = [
    "sqlite",
    "postgresql",
    "http",
    pytest.param("rabbitmq", marks=pytest.mark.slow),
]
# The same, both remote transports slow: for the longer modules (the scenarios keep HTTP fast).
TRANSPORTS_SLOW = [
    "sqlite",
    "postgresql",
    pytest.param("http", marks=pytest.mark.slow),
    pytest.param("rabbitmq", marks=pytest.mark.slow),
]


async def balances(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/balances")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()["balances"]
    return data


async def inventory(client: httpx.AsyncClient) -> dict[str, int]:
    response = await client.get("/inventory")
    assert response.status_code == 200
    data: dict[str, int] = response.json()["inventory"]
    return data


async def order(client: httpx.AsyncClient, path: str = "/orders", **body: Any) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def steps(data: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {s["name"]: (s["status"], s["error"]) for s in data["steps"]}


@contextlib.asynccontextmanager
async def serve_in_loop(app: FastAPI, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """``app`` served by uvicorn in this loop on ``sock`` (default: a free port; its lifespan
    entered first, so it is ready when this yields); its base URL. The socket listens before
    the server's loop accepts: a client connecting early waits in the backlog, not refused."""
    if sock is None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    async with app.router.lifespan_context(app):
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task
            sock.close()


@contextlib.asynccontextmanager
async def embedded_settings(backend: str, directory: Path) -> AsyncIterator[Settings]:
    """The checkout in one process on ``backend``: the shop and the saga log in one SQLite file
    in ``directory``, or in one fresh PostgreSQL schema (dropped afterwards)."""
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'sagaway.db'}"
        yield Settings(database_url=url, store_url=url, demo=True, worker_id="e2e")
        return
    require_server("postgresql", postgres_check)
    schema = unique_pg_schema("e2e")
    url = pg_schema_url(schema)
    try:
        yield Settings(database_url=url, store_url=url, demo=True, worker_id="e2e")
    finally:
        await drop_pg_schema(schema)


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app on ``settings``, its lifespan (database, engine, background tasks) entered."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://checkout.test") as c:
        yield c


@contextlib.asynccontextmanager
async def shared_client(backend: str, directory: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of one app for a whole module (a module-scoped ``client`` fixture): building
    the app and running its lifespan costs about half a second of CPU, so a module whose tests
    change nothing another test reads (bad input answered with a 4xx, documents) shares one.
    Such a module runs its tests in the module's event loop
    (``pytestmark = pytest.mark.asyncio(loop_scope="module")``)."""
    async with (
        embedded_settings(backend, directory) as settings,
        running_app(settings) as app,
        asgi_client(app) as client,
    ):
        yield client


def hold_first_step(services: Services, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Checkout sagas wait in their first step until the event is set: a reconcile pass then
    finds a saga it started or attached unfinished, as after a crash. One that finished during
    the pass would be mirrored by the same pass and counted twice."""
    released = asyncio.Event()
    shop = services.participants.shop
    validate = shop.validate_order

    async def held(order: Any) -> Any:
        await released.wait()
        return await validate(order)

    monkeypatch.setattr(shop, "validate_order", held)
    return released


def transactions(statements: list[str]) -> list[list[str]]:
    """A connection's traced statements (``set_trace_callback``), one list per BEGIN ... COMMIT."""
    found: list[list[str]] = []
    for statement in statements:
        if statement.startswith("BEGIN"):
            found.append([])
        elif found:
            found[-1].append(statement)
    return found


def shop_rows(services: Services, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """``sql`` on the embedded SQLite file the shop's tables (and the saga log) live in."""
    path = services.settings.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, args).fetchall()


def holdings(services: Services) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every product's stock and reserved units, every account's balance: what an order's
    writes move and its compensations must give back."""
    return (
        shop_rows(services, "SELECT id, stock, reserved FROM products ORDER BY id"),
        shop_rows(services, "SELECT id, balance_cents FROM accounts ORDER BY id"),
    )
