"""A service's HTTP API: ``/health``, its reads, ``POST /reset`` (demo), ``/docs`` (offline).

It is always served, whatever brings the saga commands (the participant router on this same
app over HTTP, or a RabbitMQ consumer): the gateway reads the shop through these routes.
Amounts are integer cents (``*_cents``): this is the services' API, the gateway converts at its
edge. Reads that show customers' data and ``/reset`` are admin routes, as on the gateway
(``SAGAWAY_ADMIN_TOKEN``; open in demo mode without one).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel

from checkout.api.auth import ADMIN
from checkout.dbexec import ShopExecutor
from checkout.participants import inventory as inventory_ops
from checkout.participants import payment as payment_ops
from checkout.participants import shipping as shipping_ops
from checkout.participants import shop as shop_ops
from checkout.services.specs import ServiceSpec
from checkout.settings import Settings


class ServiceHealth(BaseModel):
    status: str
    service: str
    transport: str
    demo: bool


class ResetDone(BaseModel):
    status: str
    service: str


def _executor(request: Request) -> ShopExecutor:
    executor: ShopExecutor = request.app.state.services.executor
    return executor


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.services.settings
    return settings


def common_router(spec: ServiceSpec, transport: str) -> APIRouter:
    router = APIRouter(tags=[spec.name])

    @router.get("/health")
    async def health(request: Request) -> ServiceHealth:
        """The service is up and its database was migrated."""
        return ServiceHealth(
            status="ok", service=spec.name, transport=transport, demo=_settings(request).demo
        )

    @router.post("/reset", dependencies=[ADMIN])
    async def reset(request: Request) -> ResetDone:
        """Put this service's share of the demo data back (demo mode only, else 403)."""
        if not _settings(request).demo:
            raise HTTPException(403, "Reset is only available in demo mode (SAGAWAY_DEMO=true)")
        await _executor(request).write(spec.reset)
        return ResetDone(status="reset", service=spec.name)

    return router


def payment_router() -> APIRouter:
    router = APIRouter(tags=["payment"], dependencies=[ADMIN])

    @router.get("/accounts")
    async def accounts(request: Request) -> dict[str, Any]:
        """Accounts with balance (cents) and default shipping address."""
        rows = await _executor(request).read(shop_ops.list_accounts)
        return {"accounts": [a.model_dump(mode="json") for a in rows]}

    @router.get("/accounts/{account_id}")
    async def account(request: Request, account_id: str) -> dict[str, Any]:
        found = await _executor(request).read(shop_ops.get_account, account_id)
        if found is None:
            raise HTTPException(404, f"Account {account_id!r} not found")
        return found.model_dump(mode="json")

    @router.get("/balances")
    async def balances(request: Request) -> dict[str, Any]:
        """Balance in cents per account."""
        return {"balances_cents": await _executor(request).read(shop_ops.balances)}

    @router.get("/payments")
    async def payments(request: Request, order_id: str) -> dict[str, Any]:
        rows = await _executor(request).read(payment_ops.payments_for_order, order_id)
        return {"payments": [p.model_dump(mode="json") for p in rows]}

    @router.get("/totals")
    async def totals(request: Request) -> dict[str, Any]:
        """The payment invariant: balances + captured payments, in cents."""
        return {"money_cents": await _executor(request).read(shop_ops.money_total)}

    return router


def inventory_router() -> APIRouter:
    router = APIRouter(tags=["inventory"])

    @router.get("/inventory")
    async def inventory(request: Request) -> dict[str, Any]:
        """Units available to order, per product."""
        return {"inventory": await _executor(request).read(shop_ops.inventory)}

    @router.get("/products")
    async def products(request: Request) -> dict[str, Any]:
        """The catalogue: price (cents), stock, and units held by reservations."""
        rows = await _executor(request).read(shop_ops.list_catalogue)
        return {
            "products": [
                {
                    "product_id": p.id,
                    "name": p.name,
                    "price_cents": p.price_cents,
                    "stock": p.stock,
                    "reserved": p.reserved,
                }
                for p in rows
            ]
        }

    @router.get("/prices")
    async def prices(
        request: Request, ids: Annotated[list[str], Query(max_length=500)]
    ) -> dict[str, Any]:
        """Catalogue price in cents of each known product among ``ids``."""
        return {"prices_cents": await _executor(request).read(shop_ops.prices, sorted(set(ids)))}

    @router.get("/reservations", dependencies=[ADMIN])
    async def reservations(request: Request, order_id: str) -> dict[str, Any]:
        rows = await _executor(request).read(inventory_ops.reservations_for_order, order_id)
        return {"reservations": [r.model_dump(mode="json") for r in rows]}

    @router.get("/totals")
    async def totals(request: Request) -> dict[str, Any]:
        """The inventory invariant, per product: stock + reserved."""
        return {"units": await _executor(request).read(shop_ops.unit_totals)}

    return router


def shipping_router() -> APIRouter:
    router = APIRouter(tags=["shipping"])

    @router.get("/shipped")
    async def shipped(request: Request) -> dict[str, Any]:
        """Units shipped, per product."""
        return {"shipped": await _executor(request).read(shipping_ops.shipped)}

    @router.get("/shipments", dependencies=[ADMIN])
    async def shipments(request: Request, order_id: str) -> dict[str, Any]:
        rows = await _executor(request).read(shipping_ops.shipments_for_order, order_id)
        return {"shipments": [s.model_dump(mode="json") for s in rows]}

    return router


ROUTERS = {"payment": payment_router, "inventory": inventory_router, "shipping": shipping_router}


def include_routes(app: FastAPI, spec: ServiceSpec, transport: str) -> None:
    app.include_router(common_router(spec, transport))
    app.include_router(ROUTERS[spec.name]())
