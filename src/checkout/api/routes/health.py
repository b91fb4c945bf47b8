"""Liveness. (``/`` is the shop page: :mod:`checkout.web`.)"""

from __future__ import annotations

from fastapi import APIRouter

from checkout.api.deps import ServicesDep
from checkout.api.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(services: ServicesDep) -> HealthOut:
    """The process is up and its engine is open."""
    engine = services.engine
    return HealthOut(
        status="ok",
        role=services.role,
        owner_id=engine.owner_id,
        executing=engine.execute,
        sagas_running=engine.running,
        demo=services.settings.demo,
    )
