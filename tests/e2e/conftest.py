"""E2E fixtures: the checkout app on a fresh SQLite file (shop and saga log in one file, as in
production), its lifespan run by entering the app's lifespan context, and an httpx client over
ASGI. ``services`` exposes the running composition root for invariant checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from checkout.api import create_app
from checkout.bootstrap import Services
from checkout.settings import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'sagaway.db'}"
    return Settings(database_url=url, store_url=url, demo=True, worker_id="e2e")


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://checkout.test") as c:
        yield c


@pytest.fixture
def services(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services
