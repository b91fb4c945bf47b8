"""Seed 004: an order that waits for its payment, as a choreography of three services.

``POST /orders/create_order`` (same body as ``POST /orders``, plus ``flow``) -> 201 with the
order ``pending_payment`` and its ``payment_id``; ``POST /payments/confirm`` / ``cancel``
``{"payment_id"}`` -> 200 with the payment and the order once the process ended;
``GET /payments/{id}``, ``GET /couriers``. ``GET /orders/{id}`` and ``GET /sagas/{id}`` show the
timeline (see :mod:`checkout.orderflow`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict
from starlette.convertors import StringConvertor, register_url_convertor

from checkout.api.schemas import Id, OrderRequest
from checkout.orderflow.runtime import OrderFlow
from checkout.orderflow.services import FlowError, couriers
from sagaway.choreography.http import EVENTS_PATH, HttpBus, receive_events

router = APIRouter(tags=["pay later (seed 004)"])


class _IdExcept(StringConvertor):
    """A path segment that is not one of the sibling routes' fixed words: ``GET
    /payments/{payment_id}`` must not match ``/payments/confirm`` (a POST-only path), or
    ``OPTIONS`` would advertise a GET the API does not document there."""

    def __init__(self, *reserved: str) -> None:
        self.regex = "(?!(?:" + "|".join(reserved) + ")$)[^/]+"


register_url_convertor("payment_id", _IdExcept("confirm", "cancel"))
register_url_convertor("order_id", _IdExcept("create_order"))

FlowWait = Annotated[float, Query(ge=0, le=60, description="Seconds to wait for the outcome")]


class CreateOrderRequest(OrderRequest):
    """``POST /orders``' body; ``flow`` picks how the process runs (``choreography``:
    services react to each other's events; ``orchestration``: one saga drives them)."""

    flow: Literal["choreography", "orchestration"] = "choreography"


class PaymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_id: Id


def flow_of(request: Request) -> OrderFlow:
    flow: OrderFlow | None = getattr(request.app.state.services, "flow", None)
    if flow is None:  # a worker's app has no flow
        raise HTTPException(503, "the pay-later flow does not run in this process")
    return flow


def refuse(exc: FlowError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


@router.post("/orders/create_order", status_code=201)
async def create_order(body: CreateOrderRequest, request: Request) -> dict[str, Any]:
    """Record the order pending payment; the payment service creates its pending payment."""
    flow = flow_of(request)
    try:
        return await flow.create_order(
            body.customer,
            body.lines(),
            body.shipping_address.to_domain() if body.shipping_address else None,
            flow=body.flow,
        )
    except FlowError as exc:
        raise refuse(exc) from None


@router.post("/payments/confirm")
async def confirm_payment(
    body: PaymentRequest, request: Request, wait: FlowWait = 10.0
) -> dict[str, Any]:
    """Capture the payment: the order is confirmed, a courier assigned, the order completed
    (or, with no courier for the address, the payment refunded and the order cancelled).
    Again: the same answer. A cancelled payment: 409."""
    try:
        return await flow_of(request).confirm(body.payment_id, wait=wait)
    except FlowError as exc:
        raise refuse(exc) from None


@router.post("/payments/cancel")
async def cancel_payment(
    body: PaymentRequest, request: Request, wait: FlowWait = 10.0
) -> dict[str, Any]:
    """Cancel a pending payment: the order is cancelled. A captured payment: 409."""
    try:
        return await flow_of(request).cancel(body.payment_id, wait=wait)
    except FlowError as exc:
        raise refuse(exc) from None


@router.get("/payments/{payment_id:payment_id}")
async def get_payment(payment_id: str, request: Request) -> dict[str, Any]:
    # An id no payment can have (NUL: PostgreSQL refuses it in a query) is simply not found.
    found = not _impossible(payment_id)
    payment = await flow_of(request).get_payment(payment_id) if found else None
    if payment is None:
        raise HTTPException(404, f"payment {payment_id!r} not found")
    return payment


@router.get("/couriers")
async def list_couriers(request: Request) -> dict[str, Any]:
    """The demo couriers: by province and city, by province, and the national default (the
    shipping service's list, when it runs apart)."""
    flow = flow_or_none(request)
    try:
        return {"couriers": couriers() if flow is None else await flow.couriers()}
    except FlowError as exc:
        raise refuse(exc) from None


@router.post(EVENTS_PATH, include_in_schema=False)
async def choreography_events(request: Request) -> dict[str, int]:
    """The services' domain events, over HTTP (separate services): this gateway is their hub
    (``sagaway.choreography.http``)."""
    flow = flow_or_none(request)
    if flow is None or not isinstance(flow.bus, HttpBus):
        raise HTTPException(404, "this gateway does not take events over HTTP")
    return await receive_events(flow.bus, request)


def flow_or_none(request: Request) -> OrderFlow | None:
    flow: OrderFlow | None = getattr(request.app.state.services, "flow", None)
    return flow


async def flow_order(request: Request, order_id: str) -> dict[str, Any] | None:
    """A seed 004 order with its timeline, or None (not one of them / no flow here)."""
    flow = flow_or_none(request)
    if flow is None or _impossible(order_id):
        return None
    return await flow.order_with_timeline(order_id)


def _impossible(an_id: str) -> bool:
    return "\x00" in an_id or len(an_id) > 64
