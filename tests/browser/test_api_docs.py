"""``/docs`` (Swagger UI) and ``/redoc`` render in Chromium with every request to another
origin refused: the pages need nothing from the internet."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from browserkit import Server
from playwright.sync_api import Page, Route, expect

# ReDoc's bundle shows a "Redocly" attribution logo from its CDN; the <img> hides itself when it
# fails to load (an onError handler), so offline it costs nothing. Anything else is a failure.
REDOC_ATTRIBUTION = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def _offline(page: Page, server: Server) -> list[str]:
    """Abort every request that leaves the server; return the list they are recorded in."""
    ours = urlsplit(server.url).netloc
    elsewhere: list[str] = []

    def handle(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == ours or url.startswith("data:"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    page.route("**/*", handle)
    return elsewhere


def test_swagger_ui_renders_offline(
    page: Page, server: Server, shot: Callable[[str], None]
) -> None:
    elsewhere = _offline(page, server)
    page.goto(f"{server.url}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Sagaway checkout")
    operation = page.locator(".opblock-summary-path", has_text="/checkout/{order_id}")
    expect(operation.first).to_be_visible()
    shot("docs-swagger-ui")
    assert elsewhere == []


def test_redoc_renders_offline(page: Page, server: Server, shot: Callable[[str], None]) -> None:
    elsewhere = _offline(page, server)
    page.goto(f"{server.url}/redoc")
    expect(page.locator("h1", has_text="Sagaway checkout").first).to_be_visible()
    expect(page.get_by_text("/checkout/{order_id}").first).to_be_attached()
    shot("docs-redoc")
    assert [url for url in elsewhere if url != REDOC_ATTRIBUTION] == []
