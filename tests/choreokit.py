"""A toy choreography for the choreography tests (imported as ``choreokit``).

Three services, each on its own database: ``shop`` emits ``placed``; the ``bank`` debits an
account (``charged``, or ``charge-refused`` when the balance is short); the ``post`` office ships
(``shipped``) or refuses (``ship-refused``), upon which the bank refunds (``refunded``) and the
shop cancels (``cancelled``). The monitor records each correlation into a saga store."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, select, update

from sagaway import open_store
from sagaway.choreography import (
    Choreography,
    EventBus,
    EventContext,
    EventService,
    Monitor,
    Relay,
)
from sagaway.store.base import SagaStore

META = MetaData()
ACCOUNTS = Table(
    "toy_accounts",
    META,
    Column("id", String(20), primary_key=True),
    Column("balance", Integer, nullable=False),
)
ORDERS = Table(
    "toy_orders",
    META,
    Column("id", String(40), primary_key=True),
    Column("status", String(20), nullable=False),
    Column("amount", Integer, nullable=False),
)

FLOW = Choreography.define(
    "toy-order",
    succeeded_on=["shipped"],
    compensated_on=["cancelled"],
    compensating=["ship-refused", "refunded", "charge-refused"],
    deadline_seconds=60,
)


@dataclass
class Toy:
    shop: EventService
    bank: EventService
    post: EventService
    bus: EventBus
    monitor: Monitor
    store: SagaStore
    relays: list[Relay]
    handled: dict[str, int]

    async def place(self, amount: int, city: str) -> str:
        order_id = uuid.uuid4().hex

        def place(ctx: EventContext) -> None:
            ctx.conn.execute(ORDERS.insert(), {"id": order_id, "status": "new", "amount": amount})
            ctx.emit("placed", {"order_id": order_id, "amount": amount, "city": city})

        await self.shop.transaction(place, correlation_id=order_id)
        return order_id

    async def balance(self) -> int:
        def read(conn: Any) -> int:
            return int(conn.execute(select(ACCOUNTS.c.balance)).scalar_one())

        return await self.bank.run(read)

    async def order_status(self, order_id: str) -> str:
        def read(conn: Any) -> str:
            return str(
                conn.execute(select(ORDERS.c.status).where(ORDERS.c.id == order_id)).scalar_one()
            )

        return await self.shop.run(read)


def build(urls: dict[str, str], bus: EventBus, store: SagaStore) -> Toy:
    handled: dict[str, int] = {}
    shop, bank, post = (EventService(n, urls[n]) for n in ("shop", "bank", "post"))

    def count(name: str) -> None:
        handled[name] = handled.get(name, 0) + 1

    @bank.on("placed")
    def charge(ctx: EventContext) -> None:
        count("charge")
        p = ctx.payload
        done = ctx.conn.execute(
            update(ACCOUNTS)
            .where(ACCOUNTS.c.id == "alice", ACCOUNTS.c.balance >= p["amount"])
            .values(balance=ACCOUNTS.c.balance - p["amount"])
        ).rowcount
        if done:
            ctx.emit("charged", p)
        else:
            ctx.emit("charge-refused", {**p, "reason": "insufficient funds"})

    @bank.on("ship-refused")
    def refund(ctx: EventContext) -> None:
        count("refund")
        amount = ctx.payload["amount"]
        ctx.conn.execute(
            update(ACCOUNTS)
            .where(ACCOUNTS.c.id == "alice")
            .values(balance=ACCOUNTS.c.balance + amount)
        )
        ctx.emit("refunded", ctx.payload)

    @post.on("charged")
    def ship(ctx: EventContext) -> None:
        count("ship")
        if ctx.payload["city"] == "Nowhere":
            ctx.emit("ship-refused", {**ctx.payload, "reason": "no courier for Nowhere"})
        else:
            ctx.emit("shipped", ctx.payload)

    def set_status(status: str) -> Any:
        def handler(ctx: EventContext) -> None:
            count(status)
            ctx.conn.execute(
                update(ORDERS).where(ORDERS.c.id == ctx.payload["order_id"]).values(status=status)
            )
            if status == "cancelled":
                ctx.emit("cancelled", ctx.payload)

        return handler

    shop.on("shipped")(set_status("shipped"))
    shop.on("refunded")(set_status("cancelled"))
    shop.on("charge-refused")(set_status("cancelled"))

    monitor = Monitor(store, FLOW)
    for service in (shop, bank, post):
        bus.attach(service)
    bus.subscribe("monitor", None, monitor.record)
    relays = [Relay(s, bus, interval=0.2) for s in (shop, bank, post)]
    return Toy(shop, bank, post, bus, monitor, store, relays, handled)


@contextlib.asynccontextmanager
async def running(urls: dict[str, str], bus: EventBus, store_url: str) -> AsyncIterator[Toy]:
    store = open_store(store_url)
    await store.open()
    toy = build(urls, bus, store)
    for service in (toy.shop, toy.bank, toy.post):
        service.create_tables()
        META.create_all(service.engine)

    def seed(conn: Any) -> None:
        if conn.execute(select(ACCOUNTS.c.id)).first() is None:
            conn.execute(ACCOUNTS.insert(), {"id": "alice", "balance": 10_000})

    await toy.bank.run(seed)
    await bus.open()
    for relay in toy.relays:
        relay.start()
    try:
        yield toy
    finally:
        for relay in toy.relays:
            await relay.stop()
        await bus.close()
        for service in (toy.shop, toy.bank, toy.post):
            await service.close()
        await store.close()
