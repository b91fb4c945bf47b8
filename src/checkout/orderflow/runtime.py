"""The running choreography of seed 004: its three services, the bus, relays, monitor, timers.

``OrderFlow`` is what the checkout's API holds (``services.flow``). Embedded, the order, payment
and delivery services share the shop database (the payment service debits the shop's accounts)
but each has its own tables, inbox and outbox; the bus is in-process, or RabbitMQ
(``SAGAWAY_EVENTS=rabbitmq``, the default when ``SAGAWAY_TRANSPORT=rabbitmq``): each service
then consumes its own queue on the ``saga_events`` exchange and the events really travel.

Timers: a pending payment not confirmed within ``payment_timeout`` seconds is cancelled like a
customer's cancel (``expire``), and a business transaction with no ending event by its deadline
is flagged by the monitor (``monitor.sweep``); both run every ``sweep_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from checkout.domain.models import Address, OrderLine
from checkout.orderflow import services as svc
from checkout.orderflow.orchestration import (
    PAYMENT_SIGNAL,
    STEP_SERVICES,
    ProcessInput,
    build_order_process,
    build_remote_order_process,
)
from checkout.orderflow.payments import LocalPayments, Payments, RemotePayments
from checkout.participants.orders import CatalogueSource
from sagaway import Engine
from sagaway.choreography import EventBus, EventService, InProcessBus, Monitor, Relay
from sagaway.choreography.http import HttpBus
from sagaway.errors import NotWaiting
from sagaway.state import Phase, SagaRecord, StepStatus
from sagaway.store.base import SagaStore

log = logging.getLogger("checkout.orderflow")


def sync_database_url(url: str) -> str:
    """The shop database's URL for a sync engine (the participant library picks the driver)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql")
    elif backend == "sqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def timeline(record: SagaRecord | None) -> list[dict[str, Any]]:
    """The business transaction's events in the order they happened, with who emitted them."""
    if record is None:
        return []
    rows = sorted(record.steps.values(), key=lambda r: (r.started_at or 0.0, r.name))
    out = []
    for row in rows:
        output = row.output if isinstance(row.output, dict) else {}
        name = row.name.split("#", 1)[0]
        entry: dict[str, Any] = {
            "at": row.started_at,
            "event": name,
            "service": output.get("source") or STEP_SERVICES.get(name),
            "compensation": row.phase is Phase.COMPENSATION,
        }
        if "source" in output:  # a choreography's event, as the monitor recorded it
            entry["payload"] = output.get("payload")
        else:  # an orchestrated saga's step
            entry["status"] = str(row.status)
            entry["error"] = row.error
            entry["output"] = row.output if row.status is StepStatus.SUCCEEDED else None
        out.append(entry)
    return out


class OrderFlow:
    def __init__(
        self,
        database: str | AsyncEngine,
        store: SagaStore,
        *,
        events: str = "inprocess",
        rabbitmq_url: str = "",
        payment_timeout: float = 900.0,
        sweep_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        services: Mapping[str, str] | None = None,
        admin_token: str | None = None,
        catalogue: CatalogueSource | None = None,
    ) -> None:
        """``services``: the URLs of the separate payment and shipping services (their
        pay-later parts run there, ``checkout.orderflow.parts``); None: embedded, all three
        services here. ``events``: ``inprocess``, ``rabbitmq`` or (separate services)
        ``http``, the gateway then being the hub of the services' events."""
        # Given the shop's AsyncEngine, the services share its pool (PostgreSQL: within the
        # connections the settings allow); on a SQLite file they write through a sync twin.
        url = sync_database_url(database) if isinstance(database, str) else database
        self.clock = clock
        self.payment_timeout = payment_timeout
        self.sweep_interval = sweep_interval
        self.remote = services is not None
        # Separate services: prices and accounts come from the payment and inventory APIs.
        self.catalogue = catalogue
        if self.remote and catalogue is None:
            raise ValueError("with separate services the order flow needs their catalogue")
        self.order = svc.build_order_service(url, clock)
        self.payments: Payments
        self.payment: EventService | None = None
        self.delivery: EventService | None = None
        if services is None:
            self.payment = svc.build_payment_service(url, clock, payment_timeout)
            self.delivery = svc.build_delivery_service(url, clock)
            self.services: tuple[EventService, ...] = (self.order, self.payment, self.delivery)
            self.payments = LocalPayments(self.payment, payment_timeout)
        else:
            self.services = (self.order,)
            self.payments = RemotePayments(services, admin_token=admin_token)
        self.bus: EventBus
        if events == "rabbitmq":
            from sagaway.choreography.rabbitmq import RabbitBus

            self.bus = RabbitBus(rabbitmq_url)
        elif events == "http":
            if services is None:
                raise ValueError("events over HTTP need the separate services' URLs")
            peers = {name: services[name] for name in ("payment", "shipping")}
            self.bus = HttpBus("gateway", peers)
        else:
            self.bus = InProcessBus()
        # Deadline: the customer's time to pay, plus a minute for the rest of the process.
        self.monitor = Monitor(store, svc.order_choreography(payment_timeout + 60.0), clock=clock)
        for service in self.services:
            self.bus.attach(service)
        self.bus.subscribe("monitor", None, self.monitor.record)
        self.relays = [Relay(s, self.bus, interval=1.0) for s in self.services]
        self._sweeper: asyncio.Task[None] | None = None
        # The orchestrated style: its payment and delivery steps are remote steps (the saga
        # transport carries them) when those services run apart.
        self.saga = build_remote_order_process(self) if self.remote else build_order_process(self)
        self.engine: Engine | None = None  # set by the composition root

    async def start(self) -> None:
        await self.bus.open()
        for relay in self.relays:
            relay.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="orderflow-timers")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for relay in self.relays:
            await relay.stop()
        await self.bus.close()
        await self.payments.close()
        for service in self.services:
            await service.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                if self.payment is not None:  # else the payment service's own timer
                    await self.expire()
                await self.monitor.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database restarting: try again next round
                log.warning("order flow timers failed, retrying: %r", exc)

    # -- the API ----------------------------------------------------------------------------------

    async def create_order(
        self,
        customer: str,
        items: list[OrderLine],
        address: Address | None,
        *,
        flow: str = "choreography",
        wait: float = 5.0,
    ) -> dict[str, Any]:
        """Place an order pending payment; returns it once its payment exists (choreography:
        or after ``wait`` seconds). ``flow="orchestration"``: an order-process saga drives it."""
        priced = None
        if self.catalogue is not None:
            ids = sorted({line.product_id for line in items})
            found = await self.catalogue.catalogue(customer, ids)
            account = found.account
            default = None if account is None else account.shipping_address
            priced = svc.price(customer, account is not None, default, found.prices, items, address)
        order = await self.order.transaction(
            svc.create_order, customer, items, address, flow, priced
        )
        order_id = order["order_id"]
        if flow == "orchestration":
            await self._orchestrate(order)
        else:
            await self.monitor.wait(
                order_id, wait, until=lambda r: r.step("payment-created") is not None
            )
        return await self.order_with_timeline(order_id) or order

    async def _orchestrate(self, order: dict[str, Any]) -> None:
        engine = self._engine()
        inp = ProcessInput(
            order_id=order["order_id"],
            payment_id=order["payment_id"],
            account_id=order["customer_id"],
            amount_cents=order["amount_cents"],
        )
        # The payment is recorded pending here, so the answer can show it; the saga's
        # create_payment step finds it (or records it, resuming after a crash).
        await self.payments.record_pending(inp.model_dump())
        saga_id = await engine.start(
            self.saga, inp, idempotency_key=f"order-process:{inp.order_id}"
        )
        await self.order.run(svc.set_saga_id, inp.order_id, saga_id)

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the order flow has no engine: set OrderFlow.engine")
        return self.engine

    async def confirm(self, payment_id: str, *, wait: float = 5.0) -> dict[str, Any]:
        payment = await self.payments.confirm(payment_id)
        if payment["flow"] == "orchestration":
            await self._signal(payment, f"confirm:{payment_id}", None)
        return await self._answer(payment, wait)

    async def cancel(
        self, payment_id: str, *, reason: str = "cancelled by the customer", wait: float = 5.0
    ) -> dict[str, Any]:
        payment = await self.payments.cancel(payment_id, reason)
        if payment["flow"] == "orchestration":
            await self._signal(payment, f"cancel:{payment_id}", payment["reason"] or reason)
        return await self._answer(payment, wait)

    async def _signal(self, payment: dict[str, Any], signal_id: str, error: str | None) -> None:
        """Tell the order-process saga what the customer decided (the payment's row already
        says it). A saga no longer waiting (it timed out meanwhile) has compensated or is
        compensating: its compensation cancels the payment and refunds a captured one."""
        order = await self.get_order(payment["order_id"])
        if order is None or order["saga_id"] is None:
            return
        decision = {"payment_id": payment["payment_id"], "status": payment["status"]}
        try:
            await self._engine().signal(
                order["saga_id"], PAYMENT_SIGNAL, decision, signal_id=signal_id, error=error
            )
        except NotWaiting as exc:
            log.info("payment %s: its saga no longer waits: %s", payment["payment_id"], exc)

    async def _answer(self, payment: dict[str, Any], wait: float) -> dict[str, Any]:
        """The payment, and its order once the process ended (or as it stands after ``wait``
        seconds)."""
        order = await self.get_order(payment["order_id"])
        if order is not None and order["flow"] == "orchestration" and order["saga_id"]:
            await self._engine().wait(order["saga_id"], wait)
        else:
            await self.monitor.wait(payment["order_id"], wait)
        shown = await self.order_with_timeline(payment["order_id"])
        fresh = await self.get_payment(payment["payment_id"])
        return {"payment": fresh or payment, "order": shown}

    async def expire(self, now: float | None = None) -> list[str]:
        """Cancel the pending payments past their confirmation deadline; returns their ids."""
        if self.payment is None:
            raise RuntimeError("the payment service runs apart: its own timer expires payments")
        at = self.clock() if now is None else now
        expired = await self.payment.run(svc.expired_payments, at)
        reason = f"payment not confirmed within {self.payment_timeout:g} s"
        done = []
        for payment_id in expired:
            payment = await self.payment.transaction(svc.expire_one, payment_id, reason, at)
            if payment is not None:
                done.append(payment_id)
        return done

    async def get_payment(self, payment_id: str) -> dict[str, Any] | None:
        return await self.payments.get(payment_id)

    async def couriers(self) -> list[dict[str, Any]]:
        return await self.payments.couriers()

    async def get_order(self, order_id: str) -> dict[str, Any] | None:
        return await self.order.run(svc.read_order, order_id)

    async def list_orders(self, limit: int, status: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` pay-later orders (of ``status``), newest first."""
        return await self.order.run(svc.list_orders, limit, status)

    async def order_with_timeline(self, order_id: str) -> dict[str, Any] | None:
        order = await self.get_order(order_id)
        if order is None:
            return None
        saga_id = order["saga_id"]
        record = None if saga_id is None else await self.monitor.store.load(saga_id)
        order["saga_status"] = None if record is None else str(record.status)
        order["timeline"] = timeline(record)
        return order
