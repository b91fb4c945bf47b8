"""``POST /sagas/{id}/cancel`` answers what will happen (issue 8, item 8): 202 only when the
cancel takes effect, 409 with the reason when it is too late, and the refusal is in the saga's
history. Before, a cancel during the last step answered 202 and did nothing.

The saga under test is written to the log as a worker elsewhere would leave it (its lease
live, so this process's engine leaves it alone): deterministic, no timing involved.
"""

from __future__ import annotations

import time

import httpx
from e2e_helpers import order

from checkout.bootstrap import Services
from checkout.participants import saga_input
from sagaway.engine import last_cancellable
from sagaway.state import Event, EventType, NewSaga, Phase, SagaStatus, StepRecord, StepStatus

ITEMS = [{"product_id": "product_1", "quantity": 1}]


async def _held_at(client: httpx.AsyncClient, services: Services, saga_id: str, upto: str) -> str:
    """A saga whose steps before ``upto`` succeeded and ``upto`` is running, on a worker
    elsewhere whose lease is live."""
    draft = await order(client, customer_id="user_1", items=ITEMS, checkout=False)
    info = await services.participants.orders.get_order(draft["order_id"])
    assert info is not None
    now = time.time()
    names = [s.name for s in services.saga.steps]
    rows = [
        StepRecord(name, Phase.FORWARD, StepStatus.SUCCEEDED, 1, None, None, False, now, now)
        for name in names[: names.index(upto)]
    ]
    rows.append(StepRecord(upto, Phase.FORWARD, StepStatus.RUNNING, 1, started_at=now))
    await services.engine.store.create(
        NewSaga(
            id=saga_id,
            name=services.saga.name,
            version=services.saga.version,
            input=saga_input(info).model_dump(mode="json"),
            at=now,
            status=SagaStatus.RUNNING,
            owner="worker-elsewhere",
            lease_expires_at=now + 3600,
            steps=rows,
            events=[Event(at=now, type=EventType.SAGA_STARTED)],
        )
    )
    return saga_id


async def test_cancel_during_the_last_step_is_409_with_the_reason_and_recorded(
    client: httpx.AsyncClient, services: Services
) -> None:
    last = last_cancellable(services.saga)
    assert last == services.saga.steps[-1].name  # the checkout has no retriable steps
    saga_id = await _held_at(client, services, "late-1", last)
    response = await client.post(f"/sagas/{saga_id}/cancel")
    assert response.status_code == 409, response.text
    reason = response.json()["detail"]
    assert "too late" in reason
    assert repr(last) in reason
    detail = (await client.get(f"/sagas/{saga_id}")).json()
    assert detail["cancel_requested"] is False
    refusals = [e for e in detail["history"] if e["type"] == "cancel_refused"]
    assert [e["detail"] for e in refusals] == [reason]


async def test_cancel_before_the_last_step_is_202_and_recorded(
    client: httpx.AsyncClient, services: Services
) -> None:
    saga_id = await _held_at(client, services, "early-1", services.saga.steps[1].name)
    response = await client.post(f"/sagas/{saga_id}/cancel")
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/sagas/{saga_id}"
    assert response.json()["cancel_requested"] is True
