"""One service as a process: its database, its participant (commands), its HTTP API.

``checkout participant payment [--transport http|rabbitmq] [--port 8001]`` runs
:func:`create_service_app` under uvicorn. Start-up: open the service's own database
(``--database-url`` / ``SAGAWAY_DATABASE_URL``, default ``sqlite:///./<name>.db``), apply its
own Alembic history, load its share of the demo data (demo mode, a fresh database), then accept
saga commands: over HTTP on this same app (the participant router, ``POST
/saga/commands/{command}``), or from its RabbitMQ queue (a consumer, started with the app and
stopped before it). The API (health, reads, reset, docs) is served either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Concatenate, Literal, ParamSpec, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi_offline import FastAPIOffline
from sqlalchemy import Table
from sqlalchemy.engine import Connection

from checkout.api.auth import NO_TOKEN
from checkout.api.errors import install_error_handlers
from checkout.bootstrap import ensure_schema
from checkout.db import (
    INVENTORY_INBOX,
    PAYMENT_INBOX,
    SHIPPING_INBOX,
    Database,
    migrate,
    open_database,
)
from checkout.dbexec import ShopExecutor, wrap_sqlite
from checkout.domain.models import CheckoutError
from checkout.orderflow.parts import (
    ORCHESTRATION_COMPENSATES,
    DeliveryPart,
    PaymentPart,
    ServicePart,
    delivery_routes,
    open_service_bus,
    orchestration_commands,
    payment_routes,
)
from checkout.services.api import include_routes
from checkout.services.commands import COMMANDS, COMPENSATES
from checkout.services.specs import SERVICES, ServiceSpec
from checkout.settings import Settings, database_schema
from sagaway.choreography.http import HttpBus, event_router
from sagaway.participant import Participant

log = logging.getLogger("checkout.services")
P = ParamSpec("P")
T = TypeVar("T")

Transport = Literal["http", "rabbitmq"]
INBOXES: dict[str, Table] = {
    "payment": PAYMENT_INBOX,
    "inventory": INVENTORY_INBOX,
    "shipping": SHIPPING_INBOX,
}


class SyncExecutor(ShopExecutor):
    """The service's reads and its few writes of its own (demo data, reset) on the
    participant's sync engine. On SQLite a read runs inline on the loop, on a read-only
    connection of its own (a few indexed lookups: cheaper than any thread hop, and a WAL reader
    never waits for the writer); anything else runs on a thread, in a transaction."""

    def __init__(self, participant: Participant) -> None:
        engine = participant.sync_engine
        self._engine = engine
        url = engine.url
        self._sqlite_path = (
            url.database
            if engine.dialect.name == "sqlite" and url.database not in (None, "", ":memory:")
            else None
        )
        self._reader: Connection | None = None
        self._reader_raw: sqlite3.Connection | None = None

    async def write(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        def run() -> T:
            with self._engine.begin() as conn:
                return fn(conn, *args, **kwargs)

        return await asyncio.to_thread(run)

    async def read(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._sqlite_path is None:
            return await self.write(fn, *args, **kwargs)
        if self._reader is None or self._reader_raw is None:
            raw = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=False)
            raw.execute("PRAGMA busy_timeout = 10000")
            raw.execute("PRAGMA query_only = ON")
            self._reader_raw, self._reader = raw, wrap_sqlite(raw)
        self._reader_raw.execute("BEGIN")  # one snapshot for the whole read
        try:
            return fn(self._reader, *args, **kwargs)
        finally:
            self._reader_raw.execute("COMMIT")

    async def close(self) -> None:
        if self._reader_raw is not None:
            self._reader_raw.close()
            self._reader_raw = self._reader = None


def build_participant(
    spec: ServiceSpec, database_url: str, payment_timeout: float = 900.0
) -> Participant:
    """The service's participant on its database: every command of
    :data:`checkout.services.commands.COMMANDS`, business errors being the shop's. Its sync
    engine runs each command in one transaction on a worker thread (one on SQLite): the
    operations' statements take the plain-driver fast path of :mod:`checkout.participants._sql`.
    """
    participant = Participant(
        spec.name, database_url, errors=(CheckoutError,), inbox=INBOXES[spec.name]
    )
    for command, handler in COMMANDS[spec.name].items():
        participant.handler(command, compensates=COMPENSATES.get((spec.name, command)))(handler)
    # Seed 004's orchestrated order process: its payment and delivery steps run here.
    pay_later = orchestration_commands(payment_timeout).get(spec.name, {})
    for command, handler in pay_later.items():
        compensates = ORCHESTRATION_COMPENSATES.get((spec.name, command))
        participant.handler(command, compensates=compensates)(handler)
    return participant


def build_pay_later(
    name: str, settings: Settings, transport: Transport, rabbitmq_url: str
) -> ServicePart | None:
    """Seed 004's payment (payment service) or delivery (shipping service) part, or None."""
    if name not in ("payment", "shipping"):
        return None
    bus = open_service_bus(name, transport, rabbitmq_url, settings.gateway_url)
    if name == "payment":
        return PaymentPart(
            settings.database_url, bus, payment_timeout=settings.payment_timeout_seconds
        )
    return DeliveryPart(settings.database_url, bus)


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What a running service holds (``app.state.services``)."""

    spec: ServiceSpec
    settings: Settings
    db: Database
    executor: ShopExecutor
    participant: Participant


def create_service_app(
    name: str, settings: Settings, *, transport: Transport = "http", rabbitmq_url: str = ""
) -> FastAPI:
    """The app of service ``name`` (payment, inventory, shipping) on ``settings.database_url``.
    Its lifespan migrates the database, loads the demo data and, over RabbitMQ, consumes the
    service's queue."""
    spec = SERVICES[name]
    schema = database_schema(settings.database_url)
    db = open_database(settings.database_url, schema=schema)  # migrations only
    participant = build_participant(spec, settings.database_url, settings.payment_timeout_seconds)
    state = ServiceState(spec, settings, db, SyncExecutor(participant), participant)
    pay_later = build_pay_later(name, settings, transport, rabbitmq_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stack = contextlib.AsyncExitStack()
        try:
            await ensure_schema(db, schema)
            await migrate(db, histories=[spec.history])
            if settings.demo and await state.executor.write(spec.load_demo):
                log.info("%s: demo data loaded into %s", name, settings.database_url)
            if pay_later is not None:
                await pay_later.start()
                stack.push_async_callback(pay_later.stop)
            if transport == "rabbitmq":
                from sagaway.participant.rabbitmq import RabbitParticipant

                async with RabbitParticipant(
                    state.participant.handle, rabbitmq_url, queue=spec.name
                ):
                    yield
            else:
                yield
        finally:
            await stack.aclose()
            await state.executor.close()
            await state.participant.close()
            await db.dispose()

    app = FastAPIOffline(
        title=f"Sagaway checkout: {name} service",
        summary=f"The {name} participant of the checkout saga: its reads and its commands.",
        version="0.1.0",
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.services = state
    install_error_handlers(app)
    include_routes(app, spec, transport)
    if isinstance(pay_later, PaymentPart):
        app.include_router(payment_routes(pay_later))
    elif isinstance(pay_later, DeliveryPart):
        app.include_router(delivery_routes(pay_later))
    if pay_later is not None and isinstance(pay_later.bus, HttpBus):
        app.include_router(event_router(pay_later.bus))
    if transport == "http":
        from sagaway.participant.http import participant_router

        app.include_router(
            participant_router(state.participant, authorize=authorize_commands(settings))
        )
    return app


def authorize_commands(settings: Settings) -> Callable[[Request], None] | None:
    """Saga commands move money and stock: the admin routes' rule (``checkout.api.auth``) holds
    for them. With ``SAGAWAY_ADMIN_TOKEN`` set, the gateway's dispatcher must send it; without
    one, a demo leaves them open and anything else refuses them."""
    from sagaway.participant.http import require_bearer

    if settings.admin_token is not None:
        return require_bearer(settings.admin_token.get_secret_value())
    if settings.demo:
        return None

    def refuse(_request: Request) -> None:
        raise HTTPException(403, NO_TOKEN)

    return refuse
