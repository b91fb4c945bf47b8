"""Seed-compatible checkout: ``POST /checkout`` and checking out a draft order.

``POST /checkout/{order_id}`` answers as seed 003 promises: 200 when the order completed, 400
with the error (and the order) when its checkout failed, whether or not this call started the
saga; 202 with ``Location`` while it still runs after ``wait``.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from checkout.api.deps import DEFAULT_WAIT_SECONDS, CheckoutDep, IdempotencyKey, Wait
from checkout.api.routes.orders import ACCEPTED, place, respond
from checkout.api.schemas import CheckoutFailed, OrderOut, OrderRequest, Problem
from checkout.api.views import order_out
from checkout.domain.models import OrderStatus

router = APIRouter(tags=["checkout"])

FAILED = (OrderStatus.FAILED, OrderStatus.CANCELLED)


@router.post("/checkout", status_code=201, responses=ACCEPTED)
async def checkout_new(
    body: OrderRequest,
    response: Response,
    checkout: CheckoutDep,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = DEFAULT_WAIT_SECONDS,
) -> OrderOut:
    """Same as POST /orders."""
    view, replayed = await place(checkout, body, idempotency_key, wait, route="/checkout")
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return respond(view, response)


@router.post(
    "/checkout/{order_id}",
    status_code=200,
    response_model=OrderOut,
    responses={
        200: {"description": "The order completed"},
        **ACCEPTED,
        400: {"model": CheckoutFailed, "description": "The checkout failed: why, and the order"},
        404: {"model": Problem, "description": "No such order"},
    },
)
async def checkout_draft(
    order_id: str, response: Response, checkout: CheckoutDep, wait: Wait = DEFAULT_WAIT_SECONDS
) -> OrderOut | JSONResponse:
    """Start the saga of a draft order (no new saga if it was already checked out)."""
    view, _ = await checkout.checkout_order(order_id, wait=wait)
    out = order_out(view)
    if not view.finished:
        response.status_code = 202
        response.headers["Location"] = f"/orders/{view.order.id}"
    elif view.status in FAILED:
        failed = CheckoutFailed(detail=view.error or f"Checkout {view.status.value}", order=out)
        return JSONResponse(failed.model_dump(mode="json"), status_code=400)
    return out
