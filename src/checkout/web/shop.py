"""The shop page and its fragments; the saga pages come from :func:`sagaway.web.saga_ui_router`.

The page is live without polling from the browser: ``/shop/events`` sends the new HTML of the
orders table and of the stock and balances (events ``orders`` and ``stock``) on the tick after
sagas changed, at most once a second, each rendered once for every open shop page
(``sagaway.web.LiveUpdates.fragments``). ``/shop/orders`` and ``/shop/stock`` serve the same
fragments on request (the page re-reads them after placing an order).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import PackageLoader

from checkout.bootstrap import Services
from checkout.domain.rules import format_money
from sagaway import Engine
from sagaway.web import LiveUpdates, event_stream, saga_ui_router, templates_environment

UI_PREFIX = "/ui"
TITLE = "Sagaway checkout"
ORDERS_SHOWN = 20
# The same navigation bar on every page, the shop's and the saga pages'.
NAV = (
    ("Shop", "/"),
    ("Sagas", f"{UI_PREFIX}/sagas"),
    ("Inbox", f"{UI_PREFIX}/inbox"),
    ("API docs", "/docs"),
    ("Metrics", "/metrics"),
)


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str  # data-testid="scenario-{key}"
    label: str
    expect: str
    body: dict[str, Any]


# Seed 001's four scenarios, as `checkout demo` runs them.
SCENARIO_BUTTONS = (
    Scenario(
        "happy",
        "Happy path",
        "user_1 buys 2 x product_1: completed",
        {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 2}]},
    ),
    Scenario(
        "no-stock",
        "Out of stock",
        "200 x product_1: inventory fails, nothing to undo",
        {"customer_id": "user_1", "items": [{"product_id": "product_1", "quantity": 200}]},
    ),
    Scenario(
        "no-funds",
        "Insufficient funds",
        "user_3 buys 10 x product_1: payment fails, inventory released",
        {"customer_id": "user_3", "items": [{"product_id": "product_1", "quantity": 10}]},
    ),
    Scenario(
        "bad-address",
        "Undeliverable address",
        "user_3 buys 1 x product_1: shipping fails, payment refunded, inventory released",
        {"customer_id": "user_3", "items": [{"product_id": "product_1", "quantity": 1}]},
    ),
)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def ui_routers(services_of: Any = _services) -> list[APIRouter]:
    """The shop router and the saga pages, for ``app.include_router``."""
    env = templates_environment(PackageLoader("checkout.web", "templates"))
    env.filters["money"] = format_money

    def engine_of(request: Request) -> Engine:
        engine: Engine = services_of(request).engine
        return engine

    async def retry(request: Request, saga_id: str) -> None:
        await services_of(request).tracker.retry(saga_id)

    sagas = saga_ui_router(
        engine_of,
        prefix=UI_PREFIX,
        title=TITLE,
        retry=retry,
        links=NAV,
    )
    shop = APIRouter(include_in_schema=False)

    def render(template: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(
            env.get_template(template).render(base=UI_PREFIX, title=TITLE, links=NAV, **context)
        )

    async def stock_context(services: Services) -> dict[str, Any]:
        shop_db = services.participants.shop
        return {
            "products": await shop_db.list_products(),
            "balances": await shop_db.balances(),
        }

    async def orders_context(services: Services, limit: int) -> dict[str, Any]:
        orders = await services.participants.orders.list_orders(limit=limit, offset=0)
        return {"orders": orders}

    @shop.get("/", response_class=HTMLResponse)
    async def shop_page(request: Request) -> HTMLResponse:
        services = services_of(request)
        return render(
            "checkout/shop.html",
            current="/",
            scenarios=SCENARIO_BUTTONS,
            accounts=await services.participants.shop.list_accounts(),
            demo=services.settings.demo,
            stream="/shop/events",
            **await stock_context(services),
            **await orders_context(services, ORDERS_SHOWN),
        )

    @shop.get("/shop/orders", response_class=HTMLResponse)
    async def orders_fragment(
        request: Request, limit: Annotated[int, Query(ge=1, le=200)] = ORDERS_SHOWN
    ) -> HTMLResponse:
        return render("checkout/_orders.html", **await orders_context(services_of(request), limit))

    @shop.get("/shop/stock", response_class=HTMLResponse)
    async def stock_fragment(request: Request) -> HTMLResponse:
        return render("checkout/_stock.html", **await stock_context(services_of(request)))

    @shop.get("/shop/events")
    async def shop_events(request: Request) -> Response:
        """Events ``orders`` and ``stock``: the two fragments' HTML, now and after changes."""
        services = services_of(request)

        async def orders() -> str:
            context = await orders_context(services, ORDERS_SHOWN)
            return env.get_template("checkout/_orders.html").render(base=UI_PREFIX, **context)

        async def stock() -> str:
            context = await stock_context(services)
            return env.get_template("checkout/_stock.html").render(**context)

        live = LiveUpdates.of(services.engine)
        return event_stream(
            live.fragments([("orders", "shop:orders", orders), ("stock", "shop:stock", stock)])
        )

    @shop.get("/shop/static/{name}")
    async def shop_static(name: str) -> Response:
        if name != "shop.js":
            raise HTTPException(404, f"no static file {name}")
        body = resources.files("checkout.web").joinpath("static", name).read_bytes()
        return Response(
            body, media_type="text/javascript", headers={"Cache-Control": "max-age=300"}
        )

    return [shop, sagas]
