"""Seed 004 as an orchestration: one saga (the seed's OrderProcessService) drives the same
three services' operations, its payment step waiting for the customer's confirm or cancel.

``order-process`` steps::

    order            the order exists (compensation: cancelled, with the reason)
    create_payment   the pending payment (compensation: cancelled; refunded if captured)
    payment          a durable wait for the signal "payment" (``Engine.signal``): the confirm
                     route captures the money, then signals; the cancel route cancels the
                     payment, then signals an error; no signal within the payment timeout
                     fails the wait: the saga compensates
    confirm_order    order confirmed
    create_delivery  pivot: a courier for the address, or "no courier serves ..." (compensate)
    complete_order   order completed with its courier

Same tables, same rules and the same outcomes as the choreography; the difference is who knows
the process: here the saga, there nobody (the monitor only watches).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import update
from sqlalchemy.engine import Connection

from checkout.orderflow import parts
from checkout.orderflow import services as svc
from checkout.orderflow.tables import ORDERS, FlowOrderStatus, FlowPaymentStatus
from sagaway import Saga, StepContext, StepFailed
from sagaway.choreography import EventContext
from sagaway.state import Phase

if TYPE_CHECKING:
    from checkout.orderflow.runtime import OrderFlow

ORDER_PROCESS = "order-process"
PAYMENT_SIGNAL = "payment"
# Which service each step stands for, for the order's timeline.
STEP_SERVICES = {
    "order": "order",
    "create_payment": "payment",
    PAYMENT_SIGNAL: "payment",
    "confirm_order": "order",
    "create_delivery": "delivery",
    "complete_order": "order",
}


class ProcessInput(BaseModel):
    order_id: str
    payment_id: str
    account_id: str
    amount_cents: int


class PaymentDecision(BaseModel):
    payment_id: str
    status: str


def _set_order(conn: Connection, order_id: str, now: float, values: dict[str, Any]) -> None:
    conn.execute(update(ORDERS).where(ORDERS.c.id == order_id).values(updated_at=now, **values))


def _cancel_order(conn: Connection, order_id: str, payment_id: str, now: float) -> None:
    payment = svc.read_payment(conn, payment_id)
    reason = (payment or {}).get("reason") or "order process failed"
    order = svc.read_order(conn, order_id)
    if order is not None and order["status"] != FlowOrderStatus.CANCELLED.value:
        _set_order(
            conn, order_id, now, {"status": FlowOrderStatus.CANCELLED.value, "reason": reason}
        )


def _cancel_payment(ctx: EventContext, payment_id: str, timeout_reason: str) -> None:
    row = svc.locked_payment(ctx.conn, payment_id)
    if row is None or row.status == FlowPaymentStatus.CANCELLED.value:
        return
    if row.status == FlowPaymentStatus.PENDING.value:
        reason = timeout_reason  # nobody confirmed nor cancelled: the wait timed out
    else:  # captured: a later step failed (no courier)
        delivery = svc.read_delivery(ctx.conn, row.order_id)
        reason = (delivery or {}).get("reason") or "order process failed"
    svc.cancel_payment_row(ctx, row, reason)


async def _confirm_order(flow: OrderFlow, order_id: str) -> dict[str, Any]:
    """The order's own steps, the same whether payment and shipping run here or apart."""
    confirmed = FlowOrderStatus.CONFIRMED.value
    await flow.order.run(_set_order, order_id, flow.clock(), {"status": confirmed})
    return {"status": confirmed}


async def _complete_order(flow: OrderFlow, order_id: str, courier: str) -> dict[str, Any]:
    completed = {"status": FlowOrderStatus.COMPLETED.value, "courier": courier}
    await flow.order.run(_set_order, order_id, flow.clock(), completed)
    return {"courier": courier}


def build_order_process(flow: OrderFlow) -> Saga:
    """The embedded order process: every step a local call to one of the three services."""
    saga = Saga(ORDER_PROCESS)
    timeout_reason = f"payment not confirmed within {flow.payment_timeout:g} s"
    payments, deliveries = flow.payment, flow.delivery
    assert payments is not None, "embedded: the payment service runs here"
    assert deliveries is not None, "embedded: the delivery service runs here"

    @saga.step
    async def order(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        return {"order_id": inp.order_id}

    @order.compensation
    async def cancel_order(ctx: StepContext, inp: ProcessInput, out: Any) -> None:
        await flow.order.run(_cancel_order, inp.order_id, inp.payment_id, flow.clock())

    @saga.step
    async def create_payment(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        payload = inp.model_dump()
        await payments.transaction(
            svc.insert_payment, payload, flow.payment_timeout, "orchestration"
        )
        return {"payment_id": inp.payment_id, "status": FlowPaymentStatus.PENDING.value}

    @create_payment.compensation
    async def cancel_payment(ctx: StepContext, inp: ProcessInput, out: Any) -> None:
        await payments.transaction(_cancel_payment, inp.payment_id, timeout_reason)

    saga.wait(PAYMENT_SIGNAL, timeout=flow.payment_timeout, reply=PaymentDecision)

    @saga.step
    async def confirm_order(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        return await _confirm_order(flow, inp.order_id)

    @saga.step(kind="pivot")
    async def create_delivery(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        found = await flow.order.run(svc.read_order, inp.order_id)
        assert found is not None
        courier, reason = await deliveries.run(
            svc.record_delivery, inp.order_id, found["shipping_address"], flow.clock()
        )
        if courier is None:
            raise StepFailed(reason or "no courier")
        return {"courier": courier}

    @saga.step(kind="retriable")
    async def complete_order(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        return await _complete_order(flow, inp.order_id, ctx.results["create_delivery"]["courier"])

    return saga


def build_remote_order_process(flow: OrderFlow) -> Saga:
    """The same process with the payment and shipping services apart: their steps are remote
    steps (commands of ``checkout.orderflow.parts`` over the saga transport, HTTP or RabbitMQ,
    each deduped by the step's key in the service's inbox); the order's steps run here."""
    saga = Saga(ORDER_PROCESS)
    timeout_reason = f"payment not confirmed within {flow.payment_timeout:g} s"

    @saga.step
    async def order(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        return {"order_id": inp.order_id}

    @order.compensation
    async def cancel_order(ctx: StepContext, inp: ProcessInput, out: Any) -> None:
        reason = await _failure_reason(flow, ctx.saga_id, inp.payment_id)
        await flow.order.run(_set_cancelled, inp.order_id, reason, flow.clock())

    @saga.remote("payment", parts.PAYMENT_CREATE, compensation=parts.PAYMENT_CANCEL)
    def create_payment(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        return inp.model_dump()

    @create_payment.compensation_payload
    def cancel_payment(ctx: StepContext, inp: ProcessInput, out: Any) -> dict[str, Any]:
        return {"payment_id": inp.payment_id, "timeout_reason": timeout_reason}

    saga.wait(PAYMENT_SIGNAL, timeout=flow.payment_timeout, reply=PaymentDecision)

    @saga.step
    async def confirm_order(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        return await _confirm_order(flow, inp.order_id)

    @saga.remote("shipping", parts.DELIVER, kind="pivot")
    async def create_delivery(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        found = await flow.order.run(svc.read_order, inp.order_id)
        assert found is not None
        return {"order_id": inp.order_id, "address": found["shipping_address"]}

    @saga.step(kind="retriable")
    async def complete_order(ctx: StepContext, inp: ProcessInput) -> dict[str, Any]:
        return await _complete_order(flow, inp.order_id, ctx.results["create_delivery"]["courier"])

    return saga


async def _failure_reason(flow: OrderFlow, saga_id: str, payment_id: str) -> str:
    """Why the order process compensates: the delivery's refusal (no courier), else what the
    payment says (cancelled by the customer, not confirmed in time)."""
    engine = flow.engine
    record = None if engine is None else await engine.store.load(saga_id, history=False)
    if record is not None:
        row = record.steps.get(("create_delivery", Phase.FORWARD))
        if row is not None and row.error:
            return row.error
    payment = await flow.payments.get(payment_id)
    return str((payment or {}).get("reason") or "order process failed")


def _set_cancelled(conn: Connection, order_id: str, reason: str, now: float) -> None:
    order = svc.read_order(conn, order_id)
    if order is not None and order["status"] != FlowOrderStatus.CANCELLED.value:
        _set_order(
            conn, order_id, now, {"status": FlowOrderStatus.CANCELLED.value, "reason": reason}
        )
