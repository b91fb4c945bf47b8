"""Helpers shared by the e2e tests (imported as ``e2e_helpers``)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

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
