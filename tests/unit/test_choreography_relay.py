"""The choreography ``Relay``'s stop(): it ends the relay, and a cancel of the task calling it
reaches that task instead of being taken for the relay's own end."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from sagaway.choreography import DomainEvent, EventBus, EventContext, EventService
from sagaway.choreography.bus import Relay


class SlowToLetGoBus(EventBus):
    """A bus whose publish, once cancelled, needs ``released`` before it gives up: a relay
    stopped mid-publish ends only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.publishing = asyncio.Event()
        self.letting_go = asyncio.Event()
        self.released = asyncio.Event()

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        self.publishing.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.letting_go.set()
            await self.released.wait()


async def _service_with_one_event(tmp_path: Path) -> EventService:
    service = EventService("shop", f"sqlite:///{tmp_path / 'shop.db'}")
    service.create_tables()

    def place(ctx: EventContext) -> None:
        ctx.emit("placed", {"order_id": "o-1"})

    await service.transaction(place, correlation_id="o-1")
    return service


async def test_stop_ends_the_relay_and_returns(tmp_path: Path) -> None:
    service = await _service_with_one_event(tmp_path)
    bus = SlowToLetGoBus()
    relay = Relay(service, bus)
    try:
        relay.start()
        await bus.publishing.wait()
        bus.released.set()
        await relay.stop()
        assert await service.outbox_count() == 1  # not taken by the bus: kept
    finally:
        await service.close()


async def test_a_cancel_of_the_caller_of_stop_propagates(tmp_path: Path) -> None:
    service = await _service_with_one_event(tmp_path)
    bus = SlowToLetGoBus()
    relay = Relay(service, bus)
    try:
        relay.start()
        await bus.publishing.wait()
        stopper = asyncio.create_task(relay.stop())
        await bus.letting_go.wait()  # stop() cancelled the relay and waits for its end
        stopper.cancel()
        bus.released.set()
        with pytest.raises(asyncio.CancelledError):
            await stopper
        assert stopper.cancelled()
    finally:
        await service.close()
