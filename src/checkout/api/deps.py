"""FastAPI dependencies as ``Annotated`` aliases: routes declare what they use by type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from checkout.bootstrap import Services
from checkout.participants import CheckoutParticipants
from checkout.service import CheckoutService
from sagaway import Engine

MAX_WAIT_SECONDS = 60.0
DEFAULT_WAIT_SECONDS = 10.0


# ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a
# thread hop per dependency per request for what is an attribute lookup.


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return _services(request)


async def get_engine(request: Request) -> Engine:
    return _services(request).engine


async def get_participants(request: Request) -> CheckoutParticipants:
    return _services(request).participants


async def get_checkout(request: Request) -> CheckoutService:
    return _services(request).checkout


def checkout_of(request: Request) -> CheckoutService:
    """For the hottest routes (POST /orders): the service straight from the request. Each
    ``Depends`` costs FastAPI a recursive dependency solve per request, ~8% of that route's
    CPU as measured, for what is an attribute lookup."""
    return _services(request).checkout


ServicesDep = Annotated[Services, Depends(get_services)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ParticipantsDep = Annotated[CheckoutParticipants, Depends(get_participants)]
CheckoutDep = Annotated[CheckoutService, Depends(get_checkout)]

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
        description="A repeat with the same key returns the same order; no second saga.",
    ),
]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0)]
