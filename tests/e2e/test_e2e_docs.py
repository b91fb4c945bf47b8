"""``/docs`` and ``/redoc`` work without internet: every asset they load is served by the app."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import pytest_asyncio
from e2e_helpers import shared_client

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"  # the docs do not depend on the database


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[httpx.AsyncClient]:
    """One app for the module: the tests read the docs pages and their assets."""
    async with shared_client(backend, tmp_path_factory.mktemp("app")) as shared:
        yield shared


EXPECTED_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "spec-url") and value:
                self.urls.append(value)


PAGES = [("/docs", {".js", ".css"}), ("/redoc", {".js"})]


@pytest.mark.parametrize(("page", "needs"), PAGES)
async def test_docs_pages_load_only_same_origin_assets(
    client: httpx.AsyncClient, page: str, needs: set[str]
) -> None:
    await _offline(client, page, needs)


@pytest.mark.parametrize("service", ["payment", "inventory", "shipping"])
async def test_each_service_serves_offline_docs_and_health(service: str, tmp_path: Path) -> None:
    from checkout.services.server import create_service_app
    from checkout.settings import Settings

    own = Settings(database_url=f"sqlite:///{tmp_path / service}.db", demo=True)
    app = create_service_app(service, own, transport="http")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc.test") as client:
            health = (await client.get("/health")).json()
            assert health == {"status": "ok", "service": service, "transport": "http", "demo": True}
            for page, needs in PAGES:
                await _offline(client, page, needs)
            paths = (await client.get("/openapi.json")).json()["paths"]
            assert "/saga/commands/{command}" in paths


async def _offline(client: httpx.AsyncClient, page: str, needs: set[str]) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # No absolute URL anywhere, not even in the inline script's configuration (Swagger UI's
    # validator badge would be fetched from the internet otherwise).
    assert re.findall(r"(?:https?:)?//[\w.-]+\.\w+", html) == []
    parser = _References()
    parser.feed(html)
    base = str(client.base_url)
    seen: set[str] = set()
    for url in parser.urls:
        absolute = urljoin(base + page, url)
        assert urlsplit(absolute).netloc == urlsplit(base).netloc, url
        asset = await client.get(absolute)
        assert asset.status_code == 200, url
        suffix = "." + urlsplit(absolute).path.rsplit(".", 1)[-1]
        if suffix in EXPECTED_TYPES:
            assert EXPECTED_TYPES[suffix] in asset.headers["content-type"], url
            assert len(asset.content) > 0
            seen.add(suffix)
        elif url.endswith("openapi.json"):
            assert asset.json()["openapi"].startswith("3.")
    assert needs <= seen
    if page == "/docs":
        assert '"validatorUrl": null' in html
