"""Orders: place one (a saga per order), list them, read one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from checkout.api.auth import ADMIN
from checkout.api.deps import (
    DEFAULT_WAIT_SECONDS,
    CheckoutDep,
    IdempotencyKey,
    Limit,
    Offset,
    Wait,
    checkout_of,
)
from checkout.api.idempotency import request_fingerprint
from checkout.api.routes.orderflow import flow_or_none, flow_order
from checkout.api.schemas import (
    ListedOrderStatus,
    OrderOut,
    OrderPage,
    OrderRequest,
    OrderSummary,
    PayLaterOrderOut,
)
from checkout.api.views import flow_order_summary, order_json, order_out, order_summary
from checkout.domain.models import OrderStatus
from checkout.orderflow.tables import FlowOrderStatus
from checkout.service import CheckoutService, OrderNotFound, OrderView

router = APIRouter(tags=["orders"])

# The answers of placing an order besides 201, for the routes' ``responses=``.
ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {
        "model": OrderOut,
        "description": "Accepted: the saga is still running; poll `Location`",
        "headers": {
            "Location": {
                "description": "The order: `/orders/{order_id}`",
                "schema": {"type": "string"},
            }
        },
    }
}


def answer_status(view: OrderView, *, fresh: bool = True) -> tuple[int, dict[str, str]]:
    """201 when finished, else 202 with ``Location`` to poll; 200 when nothing was started."""
    if not fresh:
        return 200, {}
    if view.finished:
        return 201, {}
    return 202, {"Location": f"/orders/{view.order.id}"}


def respond(view: OrderView, response: Response, *, fresh: bool = True) -> OrderOut:
    """The order's answer through FastAPI's response model, its status set on ``response``."""
    response.status_code, headers = answer_status(view, fresh=fresh)
    response.headers.update(headers)
    return order_out(view)


async def place(
    checkout: CheckoutService,
    body: OrderRequest,
    key: str | None,
    wait: float,
    route: str = "/orders",
) -> tuple[OrderView, bool]:
    """Place the order of ``body``; ``(view, replayed)``: ``replayed`` for a repeat of a keyed
    request, which is answered ``Idempotent-Replayed: true`` (see
    :mod:`checkout.api.idempotency`)."""
    view, created = await checkout.place_order(
        body.customer,
        body.lines(),
        shipping_address=body.shipping_address.to_domain() if body.shipping_address else None,
        payment_method=body.payment_method,
        amount_cents=body.amount_cents,
        client_prices=body.client_prices(),
        checkout=body.checkout,
        idempotency_key=key,
        order_id=body.order_id,
        request_fingerprint=None if key is None else request_fingerprint(route, body),
        wait=wait,
    )
    return view, key is not None and not created and view.order.idempotency_key == key


def answer_of(view: OrderView, replayed: bool) -> tuple[int, dict[str, str], bytes]:
    """A placed order's answer: its status, its headers and the ``OrderOut``'s JSON
    (:func:`checkout.api.views.order_json`: the bytes FastAPI dumps for it). The route
    (:func:`answered`) and the fast path (:mod:`checkout.api.fastpath`) both send this."""
    status, headers = answer_status(view)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return status, headers, order_json(view)


def answered(view: OrderView, replayed: bool) -> Response:
    """:func:`answer_of` as the response itself: FastAPI's own path from a returned model (a
    sub-response merged into the response, the model checked against the response model,
    then dumped) cost ~35k instructions more."""
    status, headers, body = answer_of(view, replayed)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


@router.post(
    "/orders",
    status_code=201,
    response_model=OrderOut,
    responses=ACCEPTED,
)
async def create_order(
    body: OrderRequest,
    request: Request,
    idempotency_key: IdempotencyKey = None,
    wait: Wait = DEFAULT_WAIT_SECONDS,
) -> Response:
    """Place an order and run its checkout saga (201 when finished within `wait`, else 202)."""
    view, replayed = await place(checkout_of(request), body, idempotency_key, wait)
    return answered(view, replayed)


@router.get("/orders", dependencies=[ADMIN])
async def list_orders(
    checkout: CheckoutDep,
    request: Request,
    limit: Limit = 50,
    offset: Offset = 0,
    status: ListedOrderStatus | None = None,
) -> OrderPage:
    """List orders, newest first, without their sagas' steps (see GET /orders/{order_id}):
    the checkout's and the pay-later ones (`kind: "pay_later"`, with their courier)."""
    wanted = None if status is None else status.value
    shop_status = wanted if wanted is None or wanted in set(OrderStatus) else None
    listed: list[OrderSummary] = []
    if wanted is None or shop_status is not None:
        # Both lists are merged newest first: each gives its first offset + limit.
        orders = await checkout.participants.orders.list_orders(
            limit=offset + limit, offset=0, status=shop_status
        )
        listed += [order_summary(o) for o in orders]
    flow = flow_or_none(request)
    if flow is not None and (wanted is None or wanted in set(FlowOrderStatus)):
        listed += [flow_order_summary(o) for o in await flow.list_orders(offset + limit, wanted)]
    listed.sort(key=lambda o: (o.created_at, o.order_id), reverse=True)
    return OrderPage(orders=listed[offset : offset + limit], limit=limit, offset=offset)


@router.get("/orders/{order_id:order_id}", response_model=OrderOut | PayLaterOrderOut)
async def get_order(order_id: str, checkout: CheckoutDep, request: Request) -> Any:
    """One order with its saga's steps (a seed 004 order: with its events' timeline)."""
    try:
        return order_out(await checkout.get(order_id))
    except OrderNotFound:
        flow = await flow_order(request, order_id)
        if flow is None:
            raise
        return PayLaterOrderOut.model_validate(flow)
