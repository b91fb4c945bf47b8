"""The shop page in Chromium: the four scenarios clicked, the orders table, the stock and
balances, and each order's saga timeline with its forward and compensation lanes."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from browserkit import Server
from playwright.sync_api import Page, expect

S, F, C = "SUCCEEDED", "forward", "compensation"

# scenario -> (order status, error, forward lane, compensation lane, saga status)
SCENARIOS = {
    "happy": (
        "completed",
        "",
        {"validate_order": S, "reserve_inventory": S, "process_payment": S, "ship_order": S},
        {},
        "SUCCEEDED",
    ),
    "no-stock": (
        "failed",
        "Insufficient inventory",
        {
            "validate_order": S,
            "reserve_inventory": "FAILED",
            "process_payment": "SKIPPED",
            "ship_order": "SKIPPED",
        },
        {},
        "COMPENSATED",
    ),
    "no-funds": (
        "failed",
        "Insufficient funds",
        {
            "validate_order": S,
            "reserve_inventory": S,
            "process_payment": "FAILED",
            "ship_order": "SKIPPED",
        },
        {"reserve_inventory": "COMPENSATED"},
        "COMPENSATED",
    ),
    "bad-address": (
        "failed",
        "Invalid shipping address",
        {"validate_order": S, "reserve_inventory": S, "process_payment": S, "ship_order": "FAILED"},
        {"reserve_inventory": "COMPENSATED", "process_payment": "COMPENSATED"},
        "COMPENSATED",
    ),
}


def lane(page: Page, phase: str) -> dict[str, str]:
    steps = page.get_by_test_id("saga-timeline").locator(
        f"[data-testid=timeline-step][data-phase={phase}]"
    )
    return {
        step.get_attribute("data-step") or "": step.get_attribute("data-status") or ""
        for step in steps.all()
    }


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_button_shows_the_outcome_and_its_timeline(
    server: Server, page: Page, shot: Callable[[str], None], scenario: str
) -> None:
    status, error, forward, undo, saga_status = SCENARIOS[scenario]
    page.goto(server.url + "/")
    expect(page.get_by_test_id("order-form")).to_be_visible()
    orders = page.get_by_test_id("orders-table")
    before = orders.locator("tbody tr[data-order-id]").count()
    page.get_by_test_id(f"scenario-{scenario}").click()
    result = page.get_by_test_id("order-result")
    expect(result).to_contain_text(f"{status}", timeout=20_000)
    # The table re-reads itself: the new order is first (newest first).
    expect(orders.locator("tbody tr[data-order-id]")).to_have_count(before + 1)
    newest = orders.locator("tbody tr[data-order-id]").first
    expect(newest).to_have_attribute("data-status", status)
    if error:
        expect(newest).to_contain_text(error)
    order_id = newest.get_attribute("data-order-id")
    assert order_id is not None
    expect(result).to_contain_text(order_id)
    shot(f"shop-after-{scenario}")

    newest.get_by_test_id("order-saga").click()
    expect(page.get_by_test_id("saga-status")).to_have_text(saga_status)
    assert lane(page, F) == forward
    assert lane(page, C) == undo
    failed = [name for name, st in forward.items() if st == "FAILED"]
    if failed:
        card = page.locator(f"[data-testid=timeline-step][data-phase={F}][data-step={failed[0]}]")
        expect(card.get_by_test_id("step-error")).to_have_text(error)
    expect(page.get_by_test_id("retry-saga")).to_have_count(0)  # finished, not FAILED
    expect(page.get_by_test_id("cancel-saga")).to_have_count(0)
    shot(f"saga-{scenario}")


def test_happy_path_moves_stock_and_money_live(server: Server, page: Page) -> None:
    # The numbers before come from the server's API, not from the page: the page may be sent
    # fragments while it loads, and what this test checks is that it ends on the server's
    # numbers, before and after (that a page is never sent older numbers than it shows is
    # tests/unit/test_web_live.py's business).
    stock = page.request.get(server.url + "/inventory").json()["inventory"]["product_1"]
    dollars = page.request.get(server.url + "/balances").json()["balances"]["user_1"]
    balance = int(Decimal(str(dollars)) * 100)
    page.goto(server.url + "/")
    cell = page.get_by_test_id("inventory").locator("tr[data-product=product_1] td[data-stock]")
    cents = page.get_by_test_id("balances").locator("tr[data-account=user_1] td[data-cents]")
    expect(cell).to_have_attribute("data-stock", str(stock))
    expect(cents).to_have_attribute("data-cents", str(balance))
    page.get_by_test_id("scenario-happy").click()  # user_1 buys 2 x product_1 at $50.00
    expect(page.get_by_test_id("order-result")).to_contain_text("completed")
    expect(cell).to_have_attribute("data-stock", str(stock - 2))
    expect(cents).to_have_attribute("data-cents", str(balance - 2 * 5000))


def test_order_form_places_an_order_with_an_address(server: Server, page: Page) -> None:
    page.goto(server.url + "/")
    form = page.get_by_test_id("order-form")
    form.get_by_label("Customer").select_option("user_2")
    form.get_by_label("Street").fill("1 Main Street")
    form.get_by_label("City").fill("Springfield")
    form.get_by_label("Postal code").fill("12345")
    form.get_by_label("Country").fill("US")
    form.get_by_role("button", name="Place order").click()
    expect(page.get_by_test_id("order-result")).to_contain_text("completed")
    newest = page.get_by_test_id("orders-table").locator("tbody tr[data-order-id]").first
    expect(newest).to_contain_text("user_2")
    expect(newest).to_have_attribute("data-status", "completed")


def test_the_shop_fits_a_phone(
    server: Server, browser: object, shot: Callable[[str], None]
) -> None:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        phone = context.new_page()
        phone.goto(server.url + "/")
        expect(phone.get_by_test_id("scenario-happy")).to_be_visible()
        # No horizontal scrolling of the page itself (wide tables scroll in their own box).
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        SCREENSHOTS_NAME = "shop-phone"
        phone.screenshot(path=str(_screenshot_dir() / f"{SCREENSHOTS_NAME}.png"), full_page=True)
    finally:
        context.close()


def _screenshot_dir():  # type: ignore[no-untyped-def]
    from browserkit import SCREENSHOTS

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
