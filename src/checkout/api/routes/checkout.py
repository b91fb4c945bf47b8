"""Seed-compatible checkout: ``POST /checkout`` and checking out a draft order."""

from __future__ import annotations

from fastapi import APIRouter, Response

from checkout.api.deps import DEFAULT_WAIT_SECONDS, CheckoutDep, IdempotencyKey, Wait
from checkout.api.routes.orders import ACCEPTED, place, respond
from checkout.api.schemas import OrderOut, OrderRequest

router = APIRouter(tags=["checkout"])


@router.post("/checkout", status_code=201, responses=ACCEPTED)
async def checkout_new(
    body: OrderRequest,
    response: Response,
    checkout: CheckoutDep,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = DEFAULT_WAIT_SECONDS,
) -> OrderOut:
    """Same as POST /orders."""
    return respond(await place(checkout, body, idempotency_key, wait), response)


@router.post("/checkout/{order_id}", status_code=201)
async def checkout_draft(
    order_id: str, response: Response, checkout: CheckoutDep, wait: Wait = DEFAULT_WAIT_SECONDS
) -> OrderOut:
    """Start the saga of a draft order (200 and no new saga if it was already checked out)."""
    view, started = await checkout.checkout_order(order_id, wait=wait)
    return respond(view, response, fresh=started)
