"""Seed 004's three services as a choreography: order, payment, delivery.

Who reacts to what (each arrow an event on the bus, emitted in the emitter's transaction)::

    order    POST /orders/create_order  -> create-payment
    payment  create-payment             -> payment-created        (a pending payment)
    payment  POST /payments/confirm     -> order-confirmed        (money captured)
    order    order-confirmed            -> create-delivery        (order confirmed)
    delivery create-delivery            -> delivery-assigned      (a courier for the city)
                                        |  cancel-payment         (no courier there)
    order    delivery-assigned          -> order-completed        (order completed + courier)
    payment  cancel-payment             -> cancel-order           (money back)
    payment  POST /payments/cancel, or not confirmed in time -> cancel-order
    order    cancel-order               -> order-cancelled        (order cancelled + reason)

An orchestrated order's payment (``flow="orchestration"``) emits none of these; its confirm or
cancel emits ``payment-decided``, which the gateway turns into the order-process saga's signal.

``order-completed`` and ``order-cancelled`` end the business transaction: the monitor reads
them (``ORDER_CHOREOGRAPHY``). Money moves through the shop's payment operations
(``checkout.participants.payment.charge/refund``, keyed by the payment id), so the shop-wide
invariant ``sum(balances) + sum(captured payments)`` holds whichever flow placed the order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Row

from checkout.db import AccountRow, ProductRow
from checkout.domain import demo
from checkout.domain.models import Address, CheckoutError, OrderLine, PricedLine
from checkout.domain.rules import address_problems, assign_courier, merge_lines, order_total
from checkout.orderflow.tables import (
    DELIVERIES,
    INBOXES,
    ORDERS,
    OUTBOXES,
    PAYMENTS,
    FlowOrderStatus,
    FlowPaymentStatus,
)
from checkout.participants import payment as shop_payment
from checkout.participants._sql import table_of
from sagaway.choreography import Choreography, EventContext, EventService
from sagaway.state import new_saga_id

PRODUCTS = table_of(ProductRow)
ACCOUNTS = table_of(AccountRow)

ORDER_CHOREOGRAPHY_NAME = "order-choreography"


def order_choreography(deadline_seconds: float) -> Choreography:
    return Choreography.define(
        ORDER_CHOREOGRAPHY_NAME,
        succeeded_on=["order-completed"],
        compensated_on=["order-cancelled"],
        compensating=["cancel-payment", "cancel-order"],
        deadline_seconds=deadline_seconds,
    )


class FlowError(Exception):
    """A refusal of the API with a client-facing message; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FlowNotFound(FlowError):
    status = 404


class FlowConflict(FlowError):
    status = 409


class FlowInvalid(FlowError):
    status = 422


# -- couriers ------------------------------------------------------------------------------------

CANADA = {"CA", "CAN", "CANADA"}


def courier_for(address: dict[str, Any]) -> str | None:
    """The courier serving the address's province and city (then province, then the national
    default), or None outside Canada: the demo couriers only serve Canadian addresses."""
    if str(address.get("country") or "").strip().upper() not in CANADA:
        return None
    return assign_courier(
        Address.model_validate(address),
        demo.COURIERS_BY_CITY,
        demo.COURIERS_BY_PROVINCE,
        demo.DEFAULT_COURIER,
    )


def couriers() -> list[dict[str, Any]]:
    """The demo couriers and what they serve (``GET /couriers``)."""
    listed: list[dict[str, Any]] = [
        {"name": name, "country": "CA", "province": province, "city": city}
        for (province, city), name in demo.COURIERS_BY_CITY.items()
    ]
    listed += [
        {"name": name, "country": "CA", "province": province, "city": None}
        for province, name in demo.COURIERS_BY_PROVINCE.items()
    ]
    listed.append({"name": demo.DEFAULT_COURIER, "country": "CA", "province": None, "city": None})
    return listed


# -- row views -----------------------------------------------------------------------------------


def order_view(row: Row[Any]) -> dict[str, Any]:
    return {
        "order_id": row.id,
        "customer_id": row.customer_id,
        "items": row.items,
        "shipping_address": row.shipping_address,
        "amount_cents": row.amount_cents,
        "status": row.status,
        "flow": row.flow,
        "payment_id": row.payment_id,
        "saga_id": row.saga_id,
        "courier": row.courier,
        "reason": row.reason,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def payment_view(row: Row[Any]) -> dict[str, Any]:
    return {
        "payment_id": row.id,
        "order_id": row.order_id,
        "account_id": row.account_id,
        "amount_cents": row.amount_cents,
        "status": row.status,
        "flow": row.flow,
        "refunded": row.refunded == "yes",
        "reason": row.reason,
        "expires_at": row.expires_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def read_order(conn: Connection, order_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(ORDERS).where(ORDERS.c.id == order_id)).first()
    return None if row is None else order_view(row)


def list_orders(conn: Connection, limit: int, status: str | None) -> list[dict[str, Any]]:
    """The newest ``limit`` pay-later orders (of ``status``), newest first."""
    query = select(ORDERS).order_by(ORDERS.c.created_at.desc(), ORDERS.c.id.desc())
    if status is not None:
        query = query.where(ORDERS.c.status == status)
    return [order_view(row) for row in conn.execute(query.limit(limit))]


def read_payment(conn: Connection, payment_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(PAYMENTS).where(PAYMENTS.c.id == payment_id)).first()
    return None if row is None else payment_view(row)


# -- order service -------------------------------------------------------------------------------


Priced = tuple[int, dict[str, Any], list[PricedLine]]  # total, shipping address, lines


def priced_order(
    conn: Connection, customer: str, items: list[OrderLine], address: Address | None
) -> Priced:
    """The order priced from the catalog in the shop database (embedded), see ``price``."""
    account = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == customer)).first()
    ids = [line.product_id for line in merge_lines(items)]
    prices = {
        row.id: int(row.price_cents)
        for row in conn.execute(
            select(PRODUCTS.c.id, PRODUCTS.c.price_cents).where(PRODUCTS.c.id.in_(ids))
        )
    }
    default = None
    if account is not None:
        default = Address(
            street=account.ship_street,
            city=account.ship_city,
            province=account.ship_province,
            postal_code=account.ship_postal_code,
            country=account.ship_country,
        )
    return price(customer, account is not None, default, prices, items, address)


def price(
    customer: str,
    known: bool,
    default_address: Address | None,
    prices: Mapping[str, int],
    items: list[OrderLine],
    address: Address | None,
) -> Priced:
    """The order's total and priced lines, and its shipping address (the account's,
    ``default_address``, when none is given); ``FlowInvalid`` with the reason when it cannot be
    placed. ``known``: the customer's account exists."""
    if not known:
        # 422, not 404: the request names something that does not exist; the URL does.
        raise FlowInvalid(f"customer {customer!r} not found")
    lines = merge_lines(items)
    missing = [line.product_id for line in lines if line.product_id not in prices]
    if missing:
        raise FlowInvalid(f"product not found: {', '.join(missing)}")
    priced = _priced(lines, dict(prices))
    total = order_total(priced)
    address = address or default_address
    if address is None:
        raise FlowInvalid("no shipping address: give one, the account has none")
    problems = address_problems(address)
    if problems:
        raise FlowInvalid(f"invalid shipping address: {'; '.join(problems)}")
    return total, address.model_dump(mode="json"), priced


def _priced(lines: list[OrderLine], prices: dict[str, int]) -> list[PricedLine]:
    return [
        PricedLine(
            product_id=line.product_id,
            quantity=line.quantity,
            unit_price_cents=prices[line.product_id],
        )
        for line in lines
    ]


def build_order_service(database: Any, clock: Callable[[], float]) -> EventService:
    order = EventService(
        "order", database, inbox=INBOXES["order"], outbox=OUTBOXES["order"], clock=clock
    )

    def set_order(ctx: EventContext, **values: Any) -> dict[str, Any] | None:
        order_id = ctx.payload["order_id"]
        ctx.conn.execute(
            update(ORDERS).where(ORDERS.c.id == order_id).values(updated_at=ctx.clock(), **values)
        )
        return read_order(ctx.conn, order_id)

    @order.on("order-confirmed")
    def confirmed(ctx: EventContext) -> None:
        row = set_order(ctx, status=FlowOrderStatus.CONFIRMED.value)
        if row is None:
            return
        ctx.emit(
            "create-delivery",
            {
                "order_id": row["order_id"],
                "payment_id": row["payment_id"],
                "address": row["shipping_address"],
                "items": row["items"],
            },
        )

    @order.on("delivery-assigned")
    def completed(ctx: EventContext) -> None:
        courier = ctx.payload["courier"]
        set_order(ctx, status=FlowOrderStatus.COMPLETED.value, courier=courier)
        ctx.emit("order-completed", {"order_id": ctx.payload["order_id"], "courier": courier})

    @order.on("cancel-order")
    def cancelled(ctx: EventContext) -> None:
        reason = ctx.payload.get("reason") or "cancelled"
        set_order(ctx, status=FlowOrderStatus.CANCELLED.value, reason=reason)
        ctx.emit("order-cancelled", {"order_id": ctx.payload["order_id"], "reason": reason})

    return order


def create_order(
    ctx: EventContext,
    customer: str,
    items: list[OrderLine],
    address: Address | None,
    flow: str,
    priced: Priced | None = None,
) -> dict[str, Any]:
    """The order service's ``POST /orders/create_order``: record the order pending payment and
    ask for a payment (``create-payment``), in one transaction. ``priced``: the order priced
    by the separate services' catalogue; None: priced here from the shop database."""
    if priced is None:
        priced = priced_order(ctx.conn, customer, items, address)
    total, shipping, lines = priced
    now = ctx.clock()
    # Time-ordered, as the shop's ``new_order_id``: the B-trees keyed by them append.
    order_id, payment_id = new_saga_id(now), new_saga_id(now)
    ctx.conn.execute(
        ORDERS.insert(),
        {
            "id": order_id,
            "customer_id": customer,
            # Priced as ordered (unit_price_cents), so a listing shows what was charged.
            "items": [line.model_dump(mode="json") for line in lines],
            "shipping_address": shipping,
            "amount_cents": total,
            "status": FlowOrderStatus.PENDING_PAYMENT.value,
            "flow": flow,
            "payment_id": payment_id,
            "saga_id": order_id if flow == "choreography" else None,
            "created_at": now,
            "updated_at": now,
        },
    )
    if flow == "choreography":
        ctx.emit(
            "create-payment",
            {
                "order_id": order_id,
                "payment_id": payment_id,
                "account_id": customer,
                "amount_cents": total,
            },
            correlation_id=order_id,
        )
    row = read_order(ctx.conn, order_id)
    assert row is not None
    return row


# -- payment service -----------------------------------------------------------------------------


def build_payment_service(
    database: Any, clock: Callable[[], float], timeout_seconds: float
) -> EventService:
    payment = EventService(
        "payment", database, inbox=INBOXES["payment"], outbox=OUTBOXES["payment"], clock=clock
    )

    @payment.on("create-payment")
    def create(ctx: EventContext) -> None:
        p = ctx.payload
        insert_payment(ctx, p, timeout_seconds, "choreography")
        ctx.emit("payment-created", {"order_id": p["order_id"], "payment_id": p["payment_id"]})

    @payment.on("cancel-payment")
    def cancel(ctx: EventContext) -> None:
        row = locked_payment(ctx.conn, ctx.payload["payment_id"])
        if row is None or row.status == FlowPaymentStatus.CANCELLED.value:
            return
        reason = ctx.payload.get("reason") or "delivery failed"
        cancel_payment_row(ctx, row, reason)

    return payment


def insert_payment(ctx: EventContext, p: dict[str, Any], timeout_seconds: float, flow: str) -> None:
    """Record the order's payment pending (once: a repeat finds it)."""
    if read_payment(ctx.conn, p["payment_id"]) is not None:
        return
    now = ctx.clock()
    ctx.conn.execute(
        PAYMENTS.insert(),
        {
            "id": p["payment_id"],
            "order_id": p["order_id"],
            "account_id": p["account_id"],
            "amount_cents": int(p["amount_cents"]),
            "status": FlowPaymentStatus.PENDING.value,
            "flow": flow,
            "charge_key": f"flow-payment:{p['payment_id']}",
            "refunded": "no",
            "expires_at": now + timeout_seconds,
            "created_at": now,
            "updated_at": now,
        },
    )


def locked_payment(conn: Connection, payment_id: str) -> Row[Any] | None:
    stmt = select(PAYMENTS).where(PAYMENTS.c.id == payment_id)
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()  # confirm and cancel of one payment queue on its row
    return conn.execute(stmt).first()


def cancel_payment_row(ctx: EventContext, row: Row[Any], reason: str) -> None:
    """Cancel the payment (refunding a captured one) and, in a choreography, ask the order to
    cancel (an orchestration's saga does that itself)."""
    refunded = "no"
    if row.status == FlowPaymentStatus.CAPTURED.value:
        shop_payment.refund(ctx.conn, row.charge_key, f"{row.charge_key}:refund")
        refunded = "yes"
    ctx.conn.execute(
        update(PAYMENTS)
        .where(PAYMENTS.c.id == row.id)
        .values(
            status=FlowPaymentStatus.CANCELLED.value,
            refunded=refunded,
            reason=reason,
            updated_at=ctx.clock(),
        )
    )
    if row.flow != "choreography":
        return
    ctx.emit(
        "cancel-order",
        {"order_id": row.order_id, "payment_id": row.id, "reason": reason},
        correlation_id=row.order_id,
    )


def confirm_payment(ctx: EventContext, payment_id: str) -> dict[str, Any]:
    """``POST /payments/confirm``: capture the money and tell the order (``order-confirmed``).
    Confirming a captured payment again answers the same; a cancelled one is a conflict."""
    row = locked_payment(ctx.conn, payment_id)
    if row is None:
        raise FlowNotFound(f"payment {payment_id!r} not found")
    if row.status == FlowPaymentStatus.CANCELLED.value:
        raise FlowConflict(
            f"payment {payment_id} is cancelled ({row.reason}): it cannot be confirmed"
        )
    if row.status == FlowPaymentStatus.PENDING.value:
        try:
            shop_payment.charge(
                ctx.conn, row.charge_key, row.order_id, row.account_id, int(row.amount_cents)
            )
        except CheckoutError as exc:
            raise FlowConflict(f"payment {payment_id} cannot be captured: {exc}") from None
        ctx.conn.execute(
            update(PAYMENTS)
            .where(PAYMENTS.c.id == payment_id)
            .values(status=FlowPaymentStatus.CAPTURED.value, updated_at=ctx.clock())
        )
        if row.flow != "choreography":
            _decided(ctx, row.order_id, payment_id, FlowPaymentStatus.CAPTURED.value, None)
            return _read(ctx.conn, payment_id)
        ctx.emit(
            "order-confirmed",
            {"order_id": row.order_id, "payment_id": payment_id},
            correlation_id=row.order_id,
        )
    view = read_payment(ctx.conn, payment_id)
    assert view is not None
    return view


def cancel_payment(ctx: EventContext, payment_id: str, reason: str) -> dict[str, Any]:
    """``POST /payments/cancel`` (and the confirmation timeout): cancel a pending payment and
    tell the order (``cancel-order``). Cancelling a cancelled payment answers the same; a
    captured one is a conflict."""
    row = locked_payment(ctx.conn, payment_id)
    if row is None:
        raise FlowNotFound(f"payment {payment_id!r} not found")
    if row.status == FlowPaymentStatus.CAPTURED.value:
        raise FlowConflict(f"payment {payment_id} is already captured: it cannot be cancelled")
    if row.status == FlowPaymentStatus.PENDING.value:
        cancel_payment_row(ctx, row, reason)
        if row.flow != "choreography":
            _decided(ctx, row.order_id, payment_id, FlowPaymentStatus.CANCELLED.value, reason)
    view = read_payment(ctx.conn, payment_id)
    assert view is not None
    return view


PAYMENT_DECIDED = "payment-decided"


def _decided(
    ctx: EventContext, order_id: str, payment_id: str, status: str, reason: str | None
) -> None:
    """An orchestrated order's payment was confirmed or cancelled by the customer: announced
    in the same transaction, so the gateway signals the order-process saga even if it died
    between this commit and its own signal (the same signal id: applied once)."""
    ctx.emit(
        PAYMENT_DECIDED,
        {"order_id": order_id, "payment_id": payment_id, "status": status, "reason": reason},
        correlation_id=order_id,
    )


def _read(conn: Connection, payment_id: str) -> dict[str, Any]:
    view = read_payment(conn, payment_id)
    assert view is not None
    return view


def expired_payments(conn: Connection, now: float) -> list[str]:
    """Pending payments of choreographies past their deadline (an orchestration's wait step
    times out on its own)."""
    rows = conn.execute(
        select(PAYMENTS.c.id).where(
            PAYMENTS.c.status == FlowPaymentStatus.PENDING.value,
            PAYMENTS.c.flow == "choreography",
            PAYMENTS.c.expires_at <= now,
        )
    )
    return [row.id for row in rows]


def expire_one(
    ctx: EventContext, payment_id: str, reason: str, now: float
) -> dict[str, Any] | None:
    """Cancel one pending payment past its deadline (the timer's pass); None if it was
    confirmed or cancelled meanwhile."""
    row = locked_payment(ctx.conn, payment_id)
    if row is None or row.status != FlowPaymentStatus.PENDING.value or row.expires_at > now:
        return None
    cancel_payment_row(ctx, row, reason)
    return read_payment(ctx.conn, payment_id)


# -- delivery service ----------------------------------------------------------------------------


def build_delivery_service(database: Any, clock: Callable[[], float]) -> EventService:
    delivery = EventService(
        "delivery", database, inbox=INBOXES["delivery"], outbox=OUTBOXES["delivery"], clock=clock
    )

    @delivery.on("create-delivery")
    def create(ctx: EventContext) -> None:
        p = ctx.payload
        courier, reason = record_delivery(ctx.conn, p["order_id"], p["address"], ctx.clock())
        if courier is not None:
            ctx.emit("delivery-assigned", {"order_id": p["order_id"], "courier": courier})
        else:
            ctx.emit(
                "cancel-payment",
                {"order_id": p["order_id"], "payment_id": p["payment_id"], "reason": reason},
            )

    return delivery


def record_delivery(
    conn: Connection, order_id: str, address: dict[str, Any], now: float
) -> tuple[str | None, str | None]:
    """Assign the order's delivery to the courier serving its address (once: a repeat reads
    the recorded assignment); ``(courier, None)``, or ``(None, reason)`` when none serves it."""
    row = conn.execute(select(DELIVERIES).where(DELIVERIES.c.order_id == order_id)).first()
    if row is not None:
        return row.courier, row.reason
    courier = courier_for(address)
    reason = None
    if courier is None:
        where = ", ".join(
            str(address.get(k)) for k in ("city", "province", "country") if address.get(k)
        )
        reason = f"no courier serves {where}"
    conn.execute(
        DELIVERIES.insert(),
        {
            "order_id": order_id,
            "courier": courier,
            "status": "assigned" if courier else "unassigned",
            "reason": reason,
            "created_at": now,
        },
    )
    return courier, reason


def read_delivery(conn: Connection, order_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(DELIVERIES).where(DELIVERIES.c.order_id == order_id)).first()
    if row is None:
        return None
    return {
        "order_id": row.order_id,
        "courier": row.courier,
        "status": row.status,
        "reason": row.reason,
    }


def set_saga_id(conn: Connection, order_id: str, saga_id: str) -> None:
    conn.execute(update(ORDERS).where(ORDERS.c.id == order_id).values(saga_id=saga_id))
