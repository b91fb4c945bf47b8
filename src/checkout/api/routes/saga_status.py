"""Seed-compatible ``GET /saga/{order_id}``: the order's saga in the seed's vocabulary."""

from __future__ import annotations

from fastapi import APIRouter

from checkout.api.deps import CheckoutDep
from checkout.api.schemas import SeedSagaStatus
from checkout.api.views import seed_status

router = APIRouter(tags=["checkout"])


@router.get("/saga/{order_id}")
async def saga_of_order(order_id: str, checkout: CheckoutDep) -> SeedSagaStatus:
    """The order's saga and per-participant status (PENDING/SUCCEEDED/FAILED/COMPENSATED...)."""
    view = await checkout.get(order_id)
    return seed_status(order_id, view.saga)
