"""Sagas: list, inspect (steps and history), and the operator's retry, cancel and pin."""

from __future__ import annotations

from fastapi import APIRouter, Response

from checkout.api.auth import ADMIN
from checkout.api.deps import EngineDep, Limit, Offset, SagaId, ServicesDep
from checkout.api.schemas import SagaDetail, SagaPage
from checkout.api.views import saga_detail, saga_summary
from sagaway import SagaStatus
from sagaway.retention import pruning_store

# All of it is the operator's: a saga's input holds the customer's address.
router = APIRouter(prefix="/sagas", tags=["sagas"], dependencies=[ADMIN])


@router.get("")
async def list_sagas(
    engine: EngineDep, status: SagaStatus | None = None, limit: Limit = 50, offset: Offset = 0
) -> SagaPage:
    """List sagas, newest first."""
    page = await engine.list_sagas(status=status, limit=limit, offset=offset)
    return SagaPage(
        sagas=[saga_summary(r) for r in page.items], total=page.total, limit=limit, offset=offset
    )


@router.get("/{saga_id}")
async def get_saga(saga_id: SagaId, engine: EngineDep) -> SagaDetail:
    """One saga: status, steps (both phases) and its history."""
    return saga_detail(await engine.get(saga_id))


@router.post("/{saga_id}/retry", status_code=202)
async def retry_saga(saga_id: SagaId, services: ServicesDep, response: Response) -> SagaDetail:
    """Retry a FAILED saga (409 if it is not FAILED); its order is processing again."""
    await services.tracker.retry(saga_id)
    response.headers["Location"] = f"/sagas/{saga_id}"
    return saga_detail(await services.engine.get(saga_id))


@router.post("/{saga_id}/cancel", status_code=202)
async def cancel_saga(saga_id: SagaId, engine: EngineDep, response: Response) -> SagaDetail:
    """Cancel a saga: 202 only when the cancel will take effect (it stops before its next
    step and compensates); 409 with the reason when it is too late (finished, already
    compensating, or its last cancellable step has started). A refusal is recorded in the
    saga's history as a ``cancel_refused`` event."""
    await engine.cancel(saga_id)
    response.headers["Location"] = f"/sagas/{saga_id}"
    return saga_detail(await engine.get(saga_id))


@router.post("/{saga_id}/pin")
async def pin_saga(saga_id: SagaId, engine: EngineDep) -> SagaDetail:
    """Pin a saga (any status): retention (``SAGAWAY_RETENTION_DAYS``, ``sagaway prune``) never
    removes it. Pinning a pinned saga changes nothing."""
    await pruning_store(engine.store).set_pinned(saga_id, True)
    return saga_detail(await engine.get(saga_id))


@router.delete("/{saga_id}/pin")
async def unpin_saga(saga_id: SagaId, engine: EngineDep) -> SagaDetail:
    """Unpin a saga: once finished and old enough, retention removes it (an old finished saga
    at once: a pin does not change when it was last written)."""
    await pruning_store(engine.store).set_pinned(saga_id, False)
    return saga_detail(await engine.get(saga_id))
