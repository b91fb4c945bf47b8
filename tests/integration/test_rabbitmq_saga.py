"""Sagas whose steps run in other services over RabbitMQ: the engine (saga log on SQLite, the
outbox relay, parked sagas) drives payment and inventory participants (the participant library,
each with its own SQLite database) through a real broker. Every saga ends terminal and money
and stock are conserved, read from the participants' own tables."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.engine import Connection

import servers
from sagaway import Engine, RetryPolicy, Saga, SagaStatus, StepContext, StepFailed
from sagaway.participant import Participant
from sagaway.participant.rabbitmq import RabbitParticipant
from sagaway.transport.base import Command
from sagaway.transport.rabbitmq import RabbitDispatcher

ORDERS = 40
STOCK = 30  # the last ORDERS - STOCK orders find nothing left: charged, then refunded
PRICE = 100
START_BALANCE = 1_000_000

_metadata = MetaData()
ACCOUNTS = Table(
    "accounts",
    _metadata,
    Column("id", String(32), primary_key=True),
    Column("balance", Integer, nullable=False),
)
STOCK_TABLE = Table(
    "stock",
    _metadata,
    Column("sku", String(32), primary_key=True),
    Column("units", Integer, nullable=False),
)
EFFECTS = Table(  # one row per effect applied: "exactly once" is countable
    "effects",
    _metadata,
    Column("n", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(255), nullable=False),
    Column("command", String(32), nullable=False),
)


class Order(BaseModel):
    id: str
    account: str
    sku: str
    amount: int


class Charge(BaseModel):
    account: str
    amount: int


class Reserve(BaseModel):
    sku: str
    qty: int


def payment_service(database: str) -> Participant:
    payment = Participant("payment", database)

    @payment.handler("charge")
    def charge(conn: Connection, payload: Charge, command: Command) -> dict[str, int]:
        changed = conn.execute(
            update(ACCOUNTS)
            .where(ACCOUNTS.c.id == payload.account, ACCOUNTS.c.balance >= payload.amount)
            .values(balance=ACCOUNTS.c.balance - payload.amount)
        ).rowcount
        if changed != 1:
            raise StepFailed("insufficient funds")
        conn.execute(insert(EFFECTS).values(message_id=command.message_id, command="charge"))
        return {"charged": payload.amount}

    @payment.handler("refund", compensates="charge")
    def refund(conn: Connection, payload: Charge, command: Command) -> None:
        conn.execute(
            update(ACCOUNTS)
            .where(ACCOUNTS.c.id == payload.account)
            .values(balance=ACCOUNTS.c.balance + payload.amount)
        )
        conn.execute(insert(EFFECTS).values(message_id=command.message_id, command="refund"))

    return payment


def inventory_service(database: str) -> Participant:
    inventory = Participant("inventory", database)

    @inventory.handler("reserve")
    def reserve(conn: Connection, payload: Reserve, command: Command) -> dict[str, int]:
        changed = conn.execute(
            update(STOCK_TABLE)
            .where(STOCK_TABLE.c.sku == payload.sku, STOCK_TABLE.c.units >= payload.qty)
            .values(units=STOCK_TABLE.c.units - payload.qty)
        ).rowcount
        if changed != 1:
            raise StepFailed("out of stock")
        conn.execute(insert(EFFECTS).values(message_id=command.message_id, command="reserve"))
        return {"reserved": payload.qty}

    @inventory.handler("release", compensates="reserve")
    def release(conn: Connection, payload: Reserve, command: Command) -> None:
        conn.execute(
            update(STOCK_TABLE)
            .where(STOCK_TABLE.c.sku == payload.sku)
            .values(units=STOCK_TABLE.c.units + payload.qty)
        )
        conn.execute(insert(EFFECTS).values(message_id=command.message_id, command="release"))

    return inventory


def checkout_saga() -> Saga:
    saga = Saga("rabbit-checkout")
    retry = RetryPolicy(max_attempts=3, initial_delay=0, jitter=0)

    @saga.remote("payment", "charge", compensation="refund", timeout=30.0, retry=retry)
    def charge(ctx: StepContext, order: Order) -> dict[str, Any]:
        return {"account": order.account, "amount": order.amount}

    @saga.remote("inventory", "reserve", compensation="release", timeout=30.0, retry=retry)
    def reserve(ctx: StepContext, order: Order) -> dict[str, Any]:
        return {"sku": order.sku, "qty": 1}

    return saga


def scalar(participant: Participant, query: Any) -> int:
    with participant.sync_engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def effects(participant: Participant, command: str) -> int:
    query = select(func.count()).select_from(EFFECTS).where(EFFECTS.c.command == command)
    return scalar(participant, query)


@dataclass
class Services:
    url: str
    payment: Participant
    inventory: Participant


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    async with servers.fresh_rabbit_vhost("saga") as url:
        payment = payment_service(f"sqlite:///{tmp_path / 'payment.db'}")
        inventory = inventory_service(f"sqlite:///{tmp_path / 'inventory.db'}")
        for participant in (payment, inventory):
            participant.create_inbox()
            _metadata.create_all(participant.sync_engine)
        with payment.sync_engine.begin() as conn:
            conn.execute(insert(ACCOUNTS).values(id="alice", balance=START_BALANCE))
        with inventory.sync_engine.begin() as conn:
            conn.execute(insert(STOCK_TABLE).values(sku="widget", units=STOCK))
        try:
            async with (
                RabbitParticipant(payment.handle, url, queue="payment"),
                RabbitParticipant(inventory.handle, url, queue="inventory"),
            ):
                yield Services(url, payment, inventory)
        finally:
            await payment.close()
            await inventory.close()


async def test_sagas_over_rabbitmq_succeed_or_compensate_and_conserve(
    services: Services, tmp_path: Path
) -> None:
    saga = checkout_saga()
    async with (
        RabbitDispatcher(services.url) as dispatcher,
        Engine(f"sqlite:///{tmp_path / 'sagas.db'}", sagas=[saga], transport=dispatcher) as engine,
    ):
        orders = [
            Order(id=f"o-{i}", account="alice", sku="widget", amount=PRICE) for i in range(ORDERS)
        ]
        ids = [await engine.start(saga, order) for order in orders]
        records = await asyncio.gather(*(engine.wait(saga_id, timeout=60) for saga_id in ids))

    statuses = [r.status for r in records]
    assert statuses.count(SagaStatus.SUCCEEDED) == STOCK
    assert statuses.count(SagaStatus.COMPENSATED) == ORDERS - STOCK
    payment, inventory = services.payment, services.inventory
    assert effects(payment, "charge") == ORDERS  # each order charged once
    assert effects(payment, "refund") == ORDERS - STOCK  # each failed one refunded once
    assert effects(inventory, "reserve") == STOCK
    assert effects(inventory, "release") == 0
    balance = scalar(payment, select(ACCOUNTS.c.balance).where(ACCOUNTS.c.id == "alice"))
    assert balance == START_BALANCE - STOCK * PRICE  # money conserved
    units = scalar(inventory, select(STOCK_TABLE.c.units).where(STOCK_TABLE.c.sku == "widget"))
    assert units == 0
    assert dispatcher.stats.dead_lettered == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_broker_restart_under_running_sagas_loses_and_doubles_nothing(
    broker_to_ourselves: None, services: Services, tmp_path: Path
) -> None:
    """``rabbitmqctl stop_app`` / ``start_app`` while sagas are parked on commands and
    replies: publishes fail into the outbox (the sweep re-sends them), deliveries in flight
    come back, and every saga still ends once, with each effect applied once."""
    saga = checkout_saga()
    n = 120
    with services.inventory.sync_engine.begin() as conn:  # stock for all: every saga succeeds
        conn.execute(update(STOCK_TABLE).values(units=n))
    stopped = False
    try:
        async with (
            RabbitDispatcher(services.url, publish_timeout=2.0) as dispatcher,
            Engine(
                f"sqlite:///{tmp_path / 'sagas.db'}", sagas=[saga], transport=dispatcher
            ) as engine,
        ):
            orders = [
                Order(id=f"o-{i}", account="alice", sku="widget", amount=PRICE) for i in range(n)
            ]
            ids = [await engine.start(saga, order) for order in orders[: n // 2]]
            await engine.wait(ids[0], timeout=60)
            stopped = True
            await servers.rabbitmqctl("stop_app")
            # Sagas started while the broker is down: their commands wait in the outbox.
            ids += [await engine.start(saga, order) for order in orders[n // 2 :]]
            await servers.rabbitmqctl("start_app")
            stopped = False
            records = await asyncio.gather(*(engine.wait(i, timeout=120) for i in ids))
    finally:
        if stopped:
            await servers.rabbitmqctl("start_app")

    assert [r.status for r in records] == [SagaStatus.SUCCEEDED] * n
    payment, inventory = services.payment, services.inventory
    assert effects(payment, "charge") == n
    assert effects(inventory, "reserve") == n
    assert effects(payment, "refund") == effects(inventory, "release") == 0
    balance = scalar(payment, select(ACCOUNTS.c.balance).where(ACCOUNTS.c.id == "alice"))
    assert balance == START_BALANCE - n * PRICE
    units = scalar(inventory, select(STOCK_TABLE.c.units).where(STOCK_TABLE.c.sku == "widget"))
    assert units == 0
    assert dispatcher.stats.reconnects >= 1
