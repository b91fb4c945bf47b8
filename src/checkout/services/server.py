"""One service as a process: its database, its participant (commands), its HTTP API.

``checkout participant payment [--transport http|rabbitmq] [--port 8001]`` runs
:func:`create_service_app` under uvicorn. Start-up: open the service's own database
(``--database-url`` / ``SAGAWAY_DATABASE_URL``, default ``sqlite:///./<name>.db``), apply its
own Alembic history, load its share of the demo data (demo mode, a fresh database), then accept
saga commands: over HTTP on this same app (the participant router, ``POST
/commands/{command}``), or from its RabbitMQ queue (a consumer, started with the app and
stopped before it). The API (health, reads, reset, docs) is served either way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import Table

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
from checkout.dbexec import EngineExecutor
from checkout.domain.models import CheckoutError
from checkout.services.api import include_routes
from checkout.services.commands import COMMANDS, COMPENSATES
from checkout.services.specs import SERVICES, ServiceSpec
from checkout.settings import Settings, database_schema
from sagaway.participant import Participant

log = logging.getLogger("checkout.services")

Transport = Literal["http", "rabbitmq"]
INBOXES: dict[str, Table] = {
    "payment": PAYMENT_INBOX,
    "inventory": INVENTORY_INBOX,
    "shipping": SHIPPING_INBOX,
}


def build_participant(spec: ServiceSpec, db: Database) -> Participant:
    """The service's participant on its database: every command of
    :data:`checkout.services.commands.COMMANDS`, business errors being the shop's."""
    participant = Participant(
        spec.name, db.engine, errors=(CheckoutError,), inbox=INBOXES[spec.name]
    )
    for command, handler in COMMANDS[spec.name].items():
        participant.handler(command, compensates=COMPENSATES.get((spec.name, command)))(handler)
    return participant


@dataclass(frozen=True, slots=True)
class ServiceState:
    """What a running service holds (``app.state.services``)."""

    spec: ServiceSpec
    settings: Settings
    db: Database
    executor: EngineExecutor
    participant: Participant


def create_service_app(
    name: str, settings: Settings, *, transport: Transport = "http", rabbitmq_url: str = ""
) -> FastAPI:
    """The app of service ``name`` (payment, inventory, shipping) on ``settings.database_url``.
    Its lifespan migrates the database, loads the demo data and, over RabbitMQ, consumes the
    service's queue."""
    spec = SERVICES[name]
    schema = database_schema(settings.database_url)
    db = open_database(settings.database_url, schema=schema)  # connects on first use
    state = ServiceState(spec, settings, db, EngineExecutor(db), build_participant(spec, db))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await ensure_schema(db, schema)
            await migrate(db, histories=[spec.history])
            if settings.demo and await state.executor.write(spec.load_demo):
                log.info("%s: demo data loaded into %s", name, settings.database_url)
            if transport == "rabbitmq":
                from sagaway.participant.rabbitmq import RabbitParticipant

                async with RabbitParticipant(
                    state.participant.handle, rabbitmq_url, queue=spec.name
                ):
                    yield
            else:
                yield
        finally:
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
    if transport == "http":
        from sagaway.participant.http import participant_router

        app.include_router(participant_router(state.participant))
    return app
