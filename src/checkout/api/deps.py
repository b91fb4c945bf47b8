"""FastAPI dependencies as ``Annotated`` aliases: routes declare what they use by type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request

from checkout.bootstrap import Services
from checkout.participants import GatewayParticipants
from checkout.service import CheckoutService
from sagaway import Engine, SagaNotFound

MAX_WAIT_SECONDS = 60.0
DEFAULT_WAIT_SECONDS = 10.0
# Far beyond any real page, far below what a database's 64-bit OFFSET overflows on.
MAX_OFFSET = 10**9
# Printable ASCII, as an HTTP header can carry it; no spaces at the ends (servers strip them).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"


# ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a
# thread hop per dependency per request for what is an attribute lookup.


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return _services(request)


async def get_engine(request: Request) -> Engine:
    return _services(request).engine


async def get_participants(request: Request) -> GatewayParticipants:
    return _services(request).participants


async def get_checkout(request: Request) -> CheckoutService:
    return _services(request).checkout


def checkout_of(request: Request) -> CheckoutService:
    """For the hottest routes (POST /orders): the service straight from the request. Each
    ``Depends`` costs FastAPI a recursive dependency solve per request, ~8% of that route's
    CPU as measured, for what is an attribute lookup."""
    return _services(request).checkout


async def saga_id_path(saga_id: Annotated[str, Path()]) -> str:
    """The ``{saga_id}`` of a path; one no saga can have (NUL, which PostgreSQL refuses in a
    query) is not found, on every backend."""
    if "\x00" in saga_id:
        raise SagaNotFound(saga_id)
    return saga_id


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ParticipantsDep = Annotated[GatewayParticipants, Depends(get_participants)]
CheckoutDep = Annotated[CheckoutService, Depends(get_checkout)]
SagaId = Annotated[str, Depends(saga_id_path)]

Wait = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait for the saga to finish (201) before answering 202.",
    ),
]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description=(
            "Send a unique key (a UUID) per purchase and the same key with the same request "
            "to retry it: the repeat replays the order (no second saga), marked "
            "`Idempotent-Replayed: true`. The key with a different request is a 422."
        ),
    ),
]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
