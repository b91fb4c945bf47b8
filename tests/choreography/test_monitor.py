"""The monitor's reading of events on its own (a real SQLite saga store): out-of-order
arrivals, late events after the end, redeliveries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagaway import SagaStatus, open_store
from sagaway.choreography import Choreography, DomainEvent, Monitor
from sagaway.state import EventType, Phase
from sagaway.store.base import SagaStore

FLOW = Choreography.define(
    "flow",
    succeeded_on=["done"],
    compensated_on=["cancelled"],
    compensating=["refund"],
    deadline_seconds=10,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SagaStore]:
    s = open_store(f"sqlite:///{tmp_path / 'log.db'}")
    await s.open()
    yield s
    await s.close()


def event(kind: str, at: float, source: str = "svc", correlation: str = "c1") -> DomainEvent:
    return DomainEvent.new(
        kind, {"reason": f"why {kind}"}, correlation_id=correlation, source=source, at=at
    )


async def test_an_event_after_the_end_is_recorded_without_changing_the_status(
    store: SagaStore,
) -> None:
    monitor = Monitor(store, FLOW, clock=lambda: 100.0)
    await monitor.record(event("started", 1.0))
    await monitor.record(event("done", 3.0))
    await monitor.record(event("middle", 2.0))  # overtaken on the bus: arrives last
    record = await store.get("c1")
    assert record.status is SagaStatus.SUCCEEDED
    assert record.error is None
    assert {name for name, _ in record.steps} == {"started", "done", "middle"}


async def test_the_first_event_may_already_be_an_undo_or_the_end(store: SagaStore) -> None:
    monitor = Monitor(store, FLOW, clock=lambda: 100.0)
    await monitor.record(event("refund", 1.0, correlation="c2"))
    first = await store.get("c2")
    assert first.status is SagaStatus.COMPENSATING
    assert first.step("refund", Phase.COMPENSATION) is not None
    await monitor.record(event("cancelled", 2.0, correlation="c3", source="order"))
    ended = await store.get("c3")
    assert ended.status is SagaStatus.COMPENSATED
    assert ended.error == "cancelled from order: why cancelled"


async def test_redelivery_and_repeated_types(store: SagaStore) -> None:
    monitor = Monitor(store, FLOW, clock=lambda: 100.0)
    once = event("ping", 1.0)
    await monitor.record(once)
    await monitor.record(once)  # the same event again: recorded once
    await monitor.record(event("ping", 2.0))  # another event of the same type
    record = await store.get("c1")
    assert sorted(name for name, _ in record.steps) == ["ping", "ping#2"]
    succeeded = [e for e in record.history if e.type is EventType.STEP_SUCCEEDED]
    assert len(succeeded) == 2
    assert record.deadline_at == 11.0  # the first event's time + deadline_seconds


async def test_wait_returns_once_the_condition_holds(store: SagaStore) -> None:
    import asyncio

    monitor = Monitor(store, FLOW, clock=lambda: 100.0)
    waiting = asyncio.create_task(monitor.wait("c1", 30))
    await monitor.record(event("started", 1.0))
    assert not waiting.done()
    await monitor.record(event("done", 2.0))
    record = await waiting
    assert record is not None
    assert record.status is SagaStatus.SUCCEEDED
    assert await monitor.wait("nobody", 0) is None
