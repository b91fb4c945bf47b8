"""Seed 004's payment and delivery services inside the checkout's separate services.

With ``SAGAWAY_TRANSPORT=http|rabbitmq`` the payment part of pay-later runs in the payment
service (``flow_payments``, its inbox and outbox, in the payment service's own database, where
the money it captures lives) and the delivery part in the shipping service
(``flow_deliveries``); the gateway keeps the order service and the monitor. Each part is:

* its choreography service (``services.build_payment_service`` / ``build_delivery_service``),
  attached to the process's event bus (``RabbitBus`` over RabbitMQ, ``HttpBus`` over HTTP: the
  gateway is the hub), with a relay publishing its outbox;
* its HTTP routes, which the gateway forwards to (payment: ``POST /payments/confirm|cancel``,
  ``GET /payments/{id}``, ``POST /pay-later/payments``; shipping: ``GET /couriers``,
  ``GET /deliveries/{order_id}``);
* the commands of the orchestrated style (``ORCHESTRATION_COMMANDS``), which the gateway's
  order-process saga sends over the saga transport like any remote step;
* payment: the timer that cancels a choreographed payment not confirmed in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Connection

from checkout.domain.models import CheckoutError
from checkout.orderflow import services as svc
from checkout.orderflow.tables import OUTBOXES, FlowPaymentStatus
from sagaway.choreography import EventBus, EventContext, EventService, Relay
from sagaway.transport import Command

log = logging.getLogger("checkout.orderflow")

Handler = Callable[[Connection, Any, Command], Any]


def open_service_bus(name: str, transport: str, rabbitmq_url: str, gateway_url: str) -> EventBus:
    """The event bus of service ``name``: RabbitMQ's, or HTTP through the gateway."""
    if transport == "rabbitmq":
        from sagaway.choreography.rabbitmq import RabbitBus

        return RabbitBus(rabbitmq_url)
    from sagaway.choreography.http import HttpBus

    return HttpBus(name, {"gateway": gateway_url})


class ServicePart:
    """One pay-later service running inside a checkout service process."""

    def __init__(self, service: EventService, bus: EventBus, *, sweep_interval: float = 1.0):
        self.service = service
        self.bus = bus
        self.sweep_interval = sweep_interval
        bus.attach(service)
        self.relay = Relay(service, bus, interval=1.0)
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.bus.open()
        self.relay.start()
        self._timer = asyncio.create_task(self._tick_forever(), name=f"{self.service.name}-timer")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        await self.relay.stop()
        await self.bus.close()
        await self.service.close()

    async def tick(self) -> None:
        """A timer pass (payment: expire unconfirmed payments)."""

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # its database restarting: next round
                log.warning("%s pay-later timer failed, retrying: %r", self.service.name, exc)


class PaymentPart(ServicePart):
    def __init__(
        self,
        database: str,
        bus: EventBus,
        *,
        payment_timeout: float,
        clock: Callable[[], float] = time.time,
        sweep_interval: float = 1.0,
    ) -> None:
        self.clock = clock
        self.payment_timeout = payment_timeout
        service = svc.build_payment_service(database, clock, payment_timeout)
        super().__init__(service, bus, sweep_interval=sweep_interval)

    async def tick(self) -> None:
        await self.expire()

    async def expire(self, now: float | None = None) -> list[str]:
        """Cancel the pending (choreographed) payments past their deadline."""
        at = self.clock() if now is None else now
        reason = f"payment not confirmed within {self.payment_timeout:g} s"
        done = []
        for payment_id in await self.service.run(svc.expired_payments, at):
            if await self.service.transaction(svc.expire_one, payment_id, reason, at):
                done.append(payment_id)
        return done


class DeliveryPart(ServicePart):
    def __init__(
        self, database: str, bus: EventBus, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(svc.build_delivery_service(database, clock), bus)


# -- routes ------------------------------------------------------------------------------------


class PaymentDecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_id: str
    reason: str | None = None


class PendingPayment(BaseModel):
    order_id: str
    payment_id: str
    account_id: str
    amount_cents: int
    flow: str = "orchestration"


def _refused(exc: svc.FlowError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


def payment_routes(part: PaymentPart) -> APIRouter:
    router = APIRouter(tags=["pay later"])
    payments = part.service

    @router.post("/payments/confirm")
    async def confirm(body: PaymentDecisionRequest) -> dict[str, Any]:
        """Capture the payment (once: again answers the same); cancelled: 409."""
        try:
            result: dict[str, Any] = await payments.transaction(
                svc.confirm_payment, body.payment_id
            )
        except svc.FlowError as exc:
            raise _refused(exc) from None
        return result

    @router.post("/payments/cancel")
    async def cancel(body: PaymentDecisionRequest) -> dict[str, Any]:
        """Cancel the pending payment (again: the same answer); captured: 409."""
        reason = body.reason or "cancelled by the customer"
        try:
            result: dict[str, Any] = await payments.transaction(
                svc.cancel_payment, body.payment_id, reason
            )
        except svc.FlowError as exc:
            raise _refused(exc) from None
        return result

    @router.post("/pay-later/payments")
    async def record_pending(body: PendingPayment) -> dict[str, Any]:
        """Record an orchestrated order's payment pending (once: a repeat finds it)."""
        await payments.transaction(
            svc.insert_payment, body.model_dump(), part.payment_timeout, body.flow
        )
        found = await payments.run(svc.read_payment, body.payment_id)
        assert found is not None
        return found

    @router.get("/payments/{payment_id}")
    async def payment(payment_id: str) -> dict[str, Any]:
        found = await payments.run(svc.read_payment, payment_id)
        if found is None:
            raise HTTPException(404, f"payment {payment_id!r} not found")
        result: dict[str, Any] = found
        return result

    return router


def delivery_routes(part: DeliveryPart) -> APIRouter:
    router = APIRouter(tags=["pay later"])

    @router.get("/couriers")
    async def couriers() -> dict[str, Any]:
        """The demo couriers: by province and city, by province, the national default."""
        return {"couriers": svc.couriers()}

    @router.get("/deliveries/{order_id}")
    async def delivery(order_id: str, request: Request) -> dict[str, Any]:
        found = await part.service.run(svc.read_delivery, order_id)
        if found is None:
            raise HTTPException(404, f"no delivery for order {order_id!r}")
        return found

    return router


# -- the orchestrated style's commands ---------------------------------------------------------


def _context(conn: Connection, service: str) -> EventContext:
    # The orchestrated payment emits nothing: the saga, not an event, carries the process on.
    return EventContext(conn, service, None, None, OUTBOXES[service], time.time)


def create_payment_command(timeout_seconds: float) -> Handler:
    def create(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
        svc.insert_payment(_context(conn, "payment"), payload, timeout_seconds, "orchestration")
        return {"payment_id": payload["payment_id"], "status": FlowPaymentStatus.PENDING.value}

    return create


def cancel_payment_command(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    """The order process compensates: a pending payment (nobody confirmed in time) is
    cancelled, a captured one (no courier) refunded; a cancelled one is left as it is."""
    row = svc.locked_payment(conn, payload["payment_id"])
    if row is None or row.status == FlowPaymentStatus.CANCELLED.value:
        return {"payment_id": payload["payment_id"], "status": "cancelled"}
    if row.status == FlowPaymentStatus.PENDING.value:
        reason = payload["timeout_reason"]
    else:
        reason = payload.get("refund_reason") or "the order could not be completed: refunded"
    svc.cancel_payment_row(_context(conn, "payment"), row, reason)
    return svc.read_payment(conn, row.id)


class NoCourier(CheckoutError):
    """No courier serves the address: the step's error is the reason, word for word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def deliver_command(conn: Connection, payload: dict[str, Any], command: Command) -> Any:
    """The pivot: a courier for the address, or a refusal saying why none serves it."""
    order_id, address = payload["order_id"], payload["address"]
    courier, reason = svc.record_delivery(conn, order_id, address, time.time())
    if courier is None:
        raise NoCourier(reason or "no courier")
    return {"courier": courier}


PAYMENT_CREATE = "pay_later_create"
PAYMENT_CANCEL = "pay_later_cancel"
DELIVER = "pay_later_deliver"


def orchestration_commands(payment_timeout: float) -> dict[str, dict[str, Handler]]:
    return {
        "payment": {
            PAYMENT_CREATE: create_payment_command(payment_timeout),
            PAYMENT_CANCEL: cancel_payment_command,
        },
        "shipping": {DELIVER: deliver_command},
    }


ORCHESTRATION_COMPENSATES = {("payment", PAYMENT_CANCEL): PAYMENT_CREATE}
