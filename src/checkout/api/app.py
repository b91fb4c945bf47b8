"""The FastAPI app factory. Its lifespan enters :func:`checkout.bootstrap.bootstrap`, so the app
holds the database, the engine and the order tracker for as long as it serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from checkout.api.auth import ADMIN
from checkout.api.errors import MAX_BODY_BYTES, BodyLimitMiddleware, install_error_handlers
from checkout.api.fastpath import OrderFastPath
from checkout.api.head import HeadAsGetMiddleware
from checkout.api.metrics import HttpMetrics, HttpMetricsMiddleware
from checkout.api.metrics import router as metrics_router
from checkout.api.routes import checkout, health, orderflow, orders, saga_status, sagas, shop
from checkout.api.schemas import Problem
from checkout.bootstrap import Role, bootstrap
from checkout.settings import Settings
from checkout.web import ui_routers
from sagaway.tracing import tracing_enabled

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    "4XX": {"model": Problem, "description": "Bad request, unknown id, conflict, too large"},
}


def telemetry(settings: Settings) -> dict[str, bool] | None:
    """FastAPI's own OpenTelemetry: all of it with ``SAGAWAY_OTEL``; its request spans when
    ``OTEL_TRACES_EXPORTER`` turns sagaway's tracing on (the saga spans are their children:
    one trace per order); else none (it costs ~3% of the loop even with no provider)."""
    if settings.otel:
        return None
    on = tracing_enabled()
    return {"tracing": on, "operation_spans": False, "metrics": False, "logs": False}


def _any_telemetry(settings: Settings) -> bool:
    config = telemetry(settings)
    return config is None or any(config.values())


def create_app(
    settings: Settings | None = None,
    *,
    role: Role = Role.ALL,
    owner_id: str | None = None,
    reconcile_interval: float = 5.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    fast_orders: bool = True,
) -> FastAPI:
    """The checkout API; ``role`` is ``Role.ALL`` (API + engine) or ``Role.API`` (no worker).
    ``fast_orders=False``: every ``POST /orders`` through FastAPI (see
    :mod:`checkout.api.fastpath`; the tests compare the two)."""
    if role is Role.WORKER:
        raise ValueError("a worker serves no HTTP: use Role.ALL or Role.API")
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with bootstrap(
            settings, role=role, owner_id=owner_id, reconcile_interval=reconcile_interval
        ) as services:
            app.state.services = services
            yield

    # /docs and /redoc load Swagger UI and ReDoc from the app, not a CDN: they work offline.
    # No validator badge either (Swagger UI would fetch it from the internet).
    app = FastAPIOffline(
        title="Sagaway checkout",
        summary="An e-commerce checkout whose every order is a durable saga.",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        swagger_ui_parameters={"validatorUrl": None},
        telemetry=telemetry(settings),
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(
        OrderFastPath,
        enabled=fast_orders and not _any_telemetry(settings),
        max_bytes=max_body_bytes,
    )
    if settings.metrics:
        app.state.http_metrics = HttpMetrics()
        app.add_middleware(HttpMetricsMiddleware, metrics=app.state.http_metrics)
    # The order routes are tried first: the router tries every route before the matching one
    # (an included router's twice: FastAPI matches, then selects), and placing an order came
    # after the docs routes FastAPI made, /metrics and the pay-later routes (~150k
    # instructions a request, counted). Outside the schema here, moved ahead of the docs
    # routes; the API document lists them where it always did (the loop below). A dependency
    # for placing orders goes on the route, its router or the app, where the fast path's
    # check sees it (checkout.api.fastpath.refusal), never on this include.
    app.include_router(orders.router, include_in_schema=False)
    app.router.routes.insert(0, app.router.routes.pop())
    app.include_router(metrics_router)
    for module in (orderflow, orders, checkout, saga_status, sagas, shop, health):
        app.include_router(module.router)
    for router in ui_routers():  # the shop at /, the saga pages under /ui
        # They show every customer's orders and balances and retry/cancel sagas: admin routes.
        app.include_router(router, dependencies=[ADMIN])
    return app
