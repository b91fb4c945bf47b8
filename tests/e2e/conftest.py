"""E2E fixtures: the checkout app on a fresh database, its lifespan run by entering the app's
lifespan context, and an httpx client over ASGI. ``services`` exposes the running composition
root for invariant checks.

Every test using ``settings`` (so ``app``, ``client``, ``services``) runs twice, through the
``backend`` fixture:

* ``sqlite``: one fresh file holding the shop and the saga log, as in the embedded default;
* ``postgresql``: the shop and the saga log in one fresh schema of the test server (the same
  ``postgresql://...?schema=`` URL for both, as a user would configure it), dropped afterwards.
  Skipped when the server is unreachable, a failure under ``CI=true`` (``servers.require_server``).

A module whose tests do not depend on the database (request validation) overrides ``backend``
with SQLite only. A module whose tests change nothing another test reads (bad input answered
with a 4xx, HTTP edges) shares one app per backend instead of one per test: its tests take
``module_client`` instead of ``client`` and run in the module's event loop
(``pytestmark = pytest.mark.asyncio(loop_scope="module")``); one of its tests that changes what
the others read takes ``client``, a fresh app, in its own loop
(``@pytest.mark.asyncio(loop_scope="function")``). The SQLite-only modules (documents) override
``backend`` and ``client`` with module-scoped fixtures of their own (``e2e_helpers.shared_client``).
A module that runs on every transport (the scenarios) overrides ``backend`` with
``e2e_helpers.TRANSPORTS``:

* ``http`` / ``rabbitmq``: payment, inventory and shipping as separate services, each with its
  own SQLite file and its real app (``checkout.services.server``) served by uvicorn in the
  test's loop on a free port; the gateway (the app under test, over ASGI as usual) reads their
  APIs and sends the saga's commands over HTTP, or over RabbitMQ in a vhost of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from e2e_helpers import asgi_client, embedded_settings, running_app, serve_in_loop, shared_client
from fastapi import FastAPI

from checkout.bootstrap import Services
from checkout.settings import Settings
from servers import fresh_rabbit_vhost


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@contextlib.asynccontextmanager
async def remote_settings(transport: str, tmp_path: Path) -> AsyncIterator[Settings]:
    """The gateway's settings with the three services running (see the module docstring)."""
    from checkout.services import SERVICES
    from checkout.services.server import create_service_app

    async with contextlib.AsyncExitStack() as stack:
        rabbitmq_url = ""
        if transport == "rabbitmq":
            # It checks the broker (require_server) once no test has it stopped.
            rabbitmq_url = await stack.enter_async_context(fresh_rabbit_vhost("e2e"))
        urls: dict[str, str] = {}
        for name in SERVICES:
            own = Settings(database_url=f"sqlite:///{tmp_path / name}.db", demo=True)
            app = create_service_app(name, own, transport=transport, rabbitmq_url=rabbitmq_url)
            urls[f"{name}_url"] = await stack.enter_async_context(serve_in_loop(app))
        url = f"sqlite:///{tmp_path / 'sagaway.db'}"
        yield Settings(
            database_url=url,
            store_url=url,
            demo=True,
            worker_id="e2e",
            transport=transport,  # type: ignore[arg-type]
            rabbitmq_url=rabbitmq_url or Settings().rabbitmq_url,
            **urls,
        )


@pytest.fixture
async def settings(backend: str, tmp_path: Path) -> AsyncIterator[Settings]:
    if backend in ("http", "rabbitmq"):
        async with remote_settings(backend, tmp_path) as remote:
            yield remote
        return
    async with embedded_settings(backend, tmp_path) as embedded:
        yield embedded


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    async with running_app(settings) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
def services(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_client(
    module_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """One app per backend for the module (see the module docstring): for tests that change
    nothing another test reads, most of them checking that nothing changed."""
    async with shared_client(module_backend, tmp_path_factory.mktemp("app")) as shared:
        yield shared
