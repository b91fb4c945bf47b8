"""The shop: inventory, products, balances, accounts, and the demo reset."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from checkout.api.auth import ADMIN, JSON_ONLY
from checkout.api.deps import ParticipantsDep, ServicesDep
from checkout.api.schemas import (
    AccountOut,
    AccountsOut,
    BalancesOut,
    InventoryOut,
    ProductOut,
    ProductsOut,
    ResetOut,
    ResetRequest,
    money,
)

router = APIRouter(tags=["shop"])


@router.get("/inventory")
async def inventory(participants: ParticipantsDep) -> InventoryOut:
    """Units available to order, per product."""
    return InventoryOut(inventory=await participants.shop.inventory())


@router.get("/products")
async def products(participants: ParticipantsDep) -> ProductsOut:
    """The catalog: price, available stock, reserved and shipped units."""
    items = await participants.shop.list_products()
    return ProductsOut(products=[ProductOut.of(p) for p in items])


@router.get("/balances", dependencies=[ADMIN])
async def balances(participants: ParticipantsDep) -> BalancesOut:
    """Account balances (JSON numbers with two decimal places at most)."""
    cents = await participants.shop.balances()
    return BalancesOut(balances={user: money(c) for user, c in cents.items()})


@router.get("/accounts", dependencies=[ADMIN])
async def accounts(participants: ParticipantsDep) -> AccountsOut:
    """Accounts with balance and default shipping address."""
    items = await participants.shop.list_accounts()
    return AccountsOut(accounts=[AccountOut.of(a) for a in items])


@router.post("/reset", dependencies=[ADMIN, JSON_ONLY])
async def reset(services: ServicesDep, body: ResetRequest | None = None) -> ResetOut:
    """Restore the demo data (demo mode only, else 403). The saga log keeps its history."""
    if not services.settings.demo:
        raise HTTPException(403, "Reset is only available in demo mode (SAGAWAY_DEMO=true)")
    shop = services.participants.shop
    await shop.reset_demo_data()
    cents = await shop.balances()
    return ResetOut(
        status="reset",
        inventory=await shop.inventory(),
        balances={user: money(c) for user, c in cents.items()},
    )
