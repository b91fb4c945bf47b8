"""Live lists in Chromium: the shop's orders table, stock and balances and the saga list follow
orders placed elsewhere (another client of the API) without a reload and without the page
asking for anything (the server pushes the new rows), and every page has the same navigation.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
from browserkit import SCREENSHOTS, Server
from playwright.sync_api import Page, expect

NAV = ["Shop", "Sagas", "Inbox", "API docs", "Metrics"]


def place_order(server: Server, quantity: int) -> dict[str, str]:
    body = {"customer_id": "user_2", "items": [{"product_id": "product_2", "quantity": quantity}]}
    response = httpx.post(f"{server.url}/orders", params={"wait": 10}, json=body, timeout=30)
    assert response.status_code == 201, response.text
    data: dict[str, str] = response.json()
    return data


def watch_requests(page: Page) -> list[str]:
    """The URLs the page requests from now on (fragment re-reads would show here)."""
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    return seen


def test_shop_and_saga_list_follow_orders_placed_elsewhere(
    server: Server, page: Page, shot: Callable[[str], None]
) -> None:
    page.goto(server.url + "/")
    sagas = page.context.new_page()
    sagas.goto(f"{server.url}/ui/sagas")
    for p in (page, sagas):
        p.evaluate("window.notReloaded = true")
    stock = page.get_by_test_id("inventory").locator("tr[data-product=product_2] td[data-stock]")
    before = int(stock.get_attribute("data-stock") or "-1")
    shop_requests, list_requests = watch_requests(page), watch_requests(sagas)

    order = place_order(server, 3)

    newest = page.get_by_test_id("orders-table").locator("tbody tr[data-order-id]").first
    expect(newest).to_have_attribute("data-order-id", order["order_id"])
    expect(newest).to_have_attribute("data-status", "completed")
    expect(stock).to_have_attribute("data-stock", str(before - 3))
    row = sagas.get_by_test_id("saga-list").locator(f"tr[data-saga-id='{order['saga_id']}']")
    expect(row).to_have_attribute("data-status", "SUCCEEDED")
    for p in (page, sagas):
        assert p.evaluate("window.notReloaded") is True
    assert shop_requests == [], "the stream brought the rows: nothing re-read"
    assert list_requests == []
    shot("shop-live")
    sagas.screenshot(path=str(SCREENSHOTS / "saga-list-live.png"), full_page=True)


def test_every_page_has_the_same_navigation(server: Server, page: Page) -> None:
    order = place_order(server, 1)
    pages = {
        "/": "Shop",
        "/ui/sagas": "Sagas",
        f"/ui/sagas/{order['saga_id']}": "Sagas",
        "/ui/inbox": "Inbox",
    }
    for url, current in pages.items():
        page.goto(server.url + url)
        nav = page.get_by_role("navigation", name="Main")
        links = nav.get_by_role("link")
        assert links.all_inner_texts()[1:] == NAV, url  # after the brand
        expect(nav.locator("[aria-current=page]")).to_have_text(current)
        expect(links.first).to_have_attribute("href", "/")  # the brand: the shop
