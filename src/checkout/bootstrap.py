"""The composition root: ``Settings -> shop database -> participants -> saga -> engine``.

Everything that runs the service (the API's lifespan, ``checkout worker``, ``checkout demo``,
the tests) builds it with one context manager::

    async with bootstrap(settings, role=Role.ALL) as services:
        view, _ = await services.checkout.place_order("user_1", items, wait=10)

Roles, so the service scales out without code changes:

* ``Role.ALL`` (``checkout serve``): the API and an executing engine in one process.
* ``Role.API`` (``checkout serve --no-worker``): ``Engine(execute=False)``: new sagas are recorded
  ``PENDING`` for workers to claim; reads and admin actions work as usual.
* ``Role.WORKER`` (``checkout worker``): an executing engine and no HTTP.

Start-up order matters: migrations, demo data (when ``settings.demo`` and the database is new),
then the order tracker is subscribed to the engine *before* the engine opens (opening recovers
sagas left by a previous life, and their outcomes must reach the orders too), then one
reconciliation pass repairs orders a crash left behind (see :mod:`checkout.tracking`).

Engine ``owner_id``: ``settings.worker_id`` when set. Otherwise a server passes a default that is
stable across restarts and unique on its host (``{host}-serve-{port}``, the port being bound
first), so a restarted server takes its sagas back at once instead of waiting for their leases
to expire; a worker without ``SAGAWAY_WORKER_ID`` gets a random id and takes over expired leases.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from prometheus_client import CollectorRegistry, ProcessCollector
from sqlalchemy import text

from checkout.db import EMBEDDED, GATEWAY, Database, migrate, open_database
from checkout.dbexec import ShopExecutor, open_executor
from checkout.orderflow.runtime import OrderFlow
from checkout.participants import CheckoutParticipants, GatewayParticipants, OrderService
from checkout.participants.orders import CatalogueSource
from checkout.sagas import build_checkout_saga, build_remote_checkout_saga
from checkout.service import CheckoutService
from checkout.settings import Settings, database_schema
from checkout.tracking import OrderTracker, order_id_of
from sagaway import Engine, Saga, open_store
from sagaway.hooks import Hook
from sagaway.logs import LoggingHook
from sagaway.metrics import PrometheusHook
from sagaway.store.base import SagaStore
from sagaway.tracing import tracing_hook
from sagaway.transport import Dispatcher

log = logging.getLogger("checkout.bootstrap")


class Role(StrEnum):
    ALL = "all"  # API + engine (the default)
    API = "api"  # API only: sagas are executed by workers
    WORKER = "worker"  # engine only

    @property
    def executes(self) -> bool:
        return self is not Role.API


@dataclass(frozen=True, slots=True)
class Services:
    """What a running process holds; the API keeps it in ``app.state.services``."""

    settings: Settings
    role: Role
    db: Database
    participants: GatewayParticipants
    saga: Saga
    engine: Engine
    tracker: OrderTracker
    checkout: CheckoutService
    registry: CollectorRegistry  # the engine's metrics (empty when metrics are off)
    # Seed 004's order flow (POST /orders/create_order); None in a worker, or when the shop
    # runs as separate services (its payment service needs the accounts).
    flow: OrderFlow | None = None


async def open_shop_database(url: str, *, pool_size: int = 5, max_overflow: int = 0) -> Database:
    """Open the shop database of ``url``. A PostgreSQL ``?schema=`` puts the shop's tables in
    that schema (through ``search_path``), created if missing: one schema-qualified URL can then
    serve as both the shop database and the saga log."""
    schema = database_schema(url)
    db = open_database(url, schema=schema, pool_size=pool_size, max_overflow=max_overflow)
    try:
        await ensure_schema(db, schema)
    except BaseException:
        await db.dispose()
        raise
    return db


async def ensure_schema(db: Database, schema: str | None) -> None:
    """Create the PostgreSQL ``schema`` of ``db`` if it is missing (None: nothing to do)."""
    if schema is None:
        return
    async with db.engine.begin() as conn:
        # One creator at a time (processes starting together); check first, so an existing
        # schema works for a role without CREATE on the database.
        lock = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
        await conn.execute(lock, {"key": f"checkout:schema:{schema}"})
        exists = await conn.scalar(
            text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
        )
        if not exists:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))


def observability_hooks(
    settings: Settings, store: object, registry: CollectorRegistry
) -> list[Hook]:
    """The engine hooks the settings ask for: Prometheus metrics (on by default), the saga log
    lines (with the order id), OpenTelemetry spans (when ``OTEL_TRACES_EXPORTER`` names an
    exporter)."""
    hooks: list[Hook] = []
    if settings.metrics:
        ProcessCollector(registry=registry)  # CPU, memory, open files of this process
        hooks.append(PrometheusHook(registry, store=store))
    hooks.append(LoggingHook(fields=lambda record: {"order_id": order_id_of(record)}))
    tracing = tracing_hook()
    if tracing is not None:
        hooks.append(tracing)
    return hooks


def server_owner_id(port: int) -> str:
    """A lease owner id stable across restarts of the server bound to ``port`` on this host."""
    return f"{socket.gethostname()}-serve-{port}"


@contextlib.asynccontextmanager
async def bootstrap(
    settings: Settings,
    *,
    role: Role = Role.ALL,
    owner_id: str | None = None,
    reconcile_interval: float = 5.0,
) -> AsyncIterator[Services]:
    """Build and start everything; on exit stop the engine (sagas in flight stay in the log
    and resume on the next start) and close the database."""
    registry = CollectorRegistry()  # this process's engine metrics: one registry per start
    db = await open_shop_database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    store = open_store(settings.saga_log_url)
    executor: ShopExecutor | None = None
    remote: contextlib.AsyncExitStack | None = None
    try:
        embedded = settings.transport == "inprocess"
        await migrate(db, histories=EMBEDDED if embedded else [GATEWAY])
        # Shop writes join the saga log's group commit when both live in one SQLite file.
        executor = await open_executor(db, store)
        participants: GatewayParticipants
        transport: Dispatcher | None = None
        success_in_saga = False
        if embedded:
            local = CheckoutParticipants.from_executor(executor)
            if settings.demo and await local.shop.load_demo_data():
                log.info("demo data loaded into %s", settings.database_url)
            # Its last step writes a success into the order row itself where the row is in
            # the saga log's file; the tracker is told (the remote saga never does).
            success_in_saga = local.orders.mirrors_success_in_saga
            participants = local
            saga = build_checkout_saga(local, success_in_saga=success_in_saga)
        else:
            remote = contextlib.AsyncExitStack()
            participants, saga, transport = await _remote_shop(settings, executor, remote)
        # Seed 004's flow: its order-process saga must be known to every engine that may
        # drive it (workers too); its services, relays and timers run where the API does.
        # Separate services: the order flow prices orders from their catalogue (RemoteShop).
        catalogue = None if embedded else cast(CatalogueSource, participants.shop)
        flow = open_order_flow(settings, store, db, catalogue)
        engine = Engine(
            store,
            sagas=[saga] if flow is None else [saga, flow.saga],
            owner_id=settings.worker_id or owner_id,
            lease_seconds=settings.lease_seconds,
            execute=role.executes,
            retention_days=settings.retention_days,
            hooks=observability_hooks(settings, store, registry),
            transport=transport,
        )
        tracker = OrderTracker(
            participants.orders,
            engine,
            saga,
            reconcile_interval=reconcile_interval,
            success_in_saga=success_in_saga,
        )
        if role.executes:
            engine.subscribe(tracker.on_transition)
        if flow is not None:
            flow.engine = engine
        await engine.open()
        try:
            if flow is not None and role is not Role.WORKER:
                await flow.start()
            if role.executes:
                fixed = await tracker.reconcile(grace_seconds=0)
                if fixed:
                    log.warning("reconciled %d orders with their finished sagas", fixed)
                tracker.start()
            yield Services(
                settings=settings,
                role=role,
                db=db,
                participants=participants,
                saga=saga,
                engine=engine,
                tracker=tracker,
                checkout=CheckoutService(participants, engine, tracker),
                registry=registry,
                flow=flow if role is not Role.WORKER else None,
            )
        finally:
            if flow is not None:
                await flow.stop()
            await tracker.stop()
            await engine.close()
            await tracker.drain()
    finally:
        if remote is not None:
            await remote.aclose()
        if executor is not None:
            await executor.close()
        await db.dispose()


def open_order_flow(
    settings: Settings, store: SagaStore, db: Database, catalogue: CatalogueSource | None = None
) -> OrderFlow:
    """Seed 004's order flow on the shop database (its pool). Embedded, its events travel
    in-process or over RabbitMQ; with separate services, its payment and delivery parts run in
    the payment and shipping services and the events travel over the saga transport (RabbitMQ,
    or HTTP with this gateway as the hub)."""
    events: str
    services: dict[str, str] | None
    if settings.transport == "inprocess":
        events = settings.events or "inprocess"
        services = None
    else:
        events = settings.transport
        services = settings.service_urls
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return OrderFlow(
        db.engine,
        store,
        events=events,
        rabbitmq_url=settings.rabbitmq_url,
        payment_timeout=settings.payment_timeout_seconds,
        services=services,
        admin_token=token,
        catalogue=catalogue,
    )


async def _remote_shop(
    settings: Settings, executor: ShopExecutor, stack: contextlib.AsyncExitStack
) -> tuple[GatewayParticipants, Saga, Dispatcher]:
    """The gateway of separate services: the shop read from their APIs, the saga's commands
    sent over ``settings.transport``."""
    from checkout.remote import RemoteShop, open_dispatcher

    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    shop = RemoteShop(settings.service_urls, orders=executor, admin_token=token)
    stack.push_async_callback(shop.close)
    # Opened by the engine; closed here, after the engine (it does not close what it was given).
    dispatcher = open_dispatcher(
        settings.transport, settings.service_urls, settings.rabbitmq_url, token
    )
    stack.push_async_callback(dispatcher.close)
    participants = GatewayParticipants(
        shop=shop,  # type: ignore[arg-type]  # RemoteShop answers what ShopService does
        orders=OrderService(executor, catalogue=shop),
    )
    return participants, build_remote_checkout_saga(shop), dispatcher
