"""The event bus port, its in-process implementation, and the outbox relay.

* ``EventBus.subscribe(name, types, handler)``: ``handler(event)`` for every event whose type is
  in ``types`` (None: every event, the monitor). ``publish(events)`` returns once the bus has
  taken them all (RabbitMQ: confirmed) and raises otherwise, so the relay keeps them.
* ``InProcessBus`` (``make run``, tests): ``publish`` awaits each subscriber's handler. A handler
  that raises makes the publish raise: the relay keeps the event and publishes it again later,
  to every subscriber; those that had handled it find it in their inbox.
* ``Relay``: publishes one service's outbox, oldest first, and deletes what the bus took. Fast
  path: woken by the service right after a transaction that emitted events commits; sweep:
  every ``interval`` seconds (events left by a crash between commit and publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from sagaway.choreography.events import DomainEvent
from sagaway.choreography.service import EventService

log = logging.getLogger("sagaway.choreography")

EventSubscriber = Callable[[DomainEvent], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Subscription:
    name: str
    types: frozenset[str] | None  # None: every event
    handler: EventSubscriber

    def wants(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types


class EventBus(ABC):
    """How events travel between services (in-process, RabbitMQ)."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def subscribe(self, name: str, types: Collection[str] | None, handler: EventSubscriber) -> None:
        """Register before ``open``: ``name`` names the consumer (its queue over RabbitMQ)."""
        if any(s.name == name for s in self.subscriptions):
            raise ValueError(f"a subscriber named {name!r} is already registered")
        self.subscriptions.append(
            Subscription(name, None if types is None else frozenset(types), handler)
        )

    def attach(self, service: EventService) -> None:
        """Subscribe ``service`` to the event types it reacts to."""
        self.subscribe(service.name, service.types, service.deliver)

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and start consuming. Idempotent."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop consuming (deliveries in flight finish) and disconnect. Idempotent."""

    @abstractmethod
    async def publish(self, events: Sequence[DomainEvent]) -> None:
        """Hand ``events`` to the bus; raise if any may not have been taken."""


class InProcessBus(EventBus):
    """Delivers each event to the subscribers of this process, awaiting them in turn."""

    async def publish(self, events: Sequence[DomainEvent]) -> None:
        for event in events:
            for sub in self.subscriptions:
                if sub.wants(event.type):
                    await sub.handler(event)


class Relay:
    """Publishes ``service``'s outbox on ``bus`` (see the module docstring)."""

    def __init__(
        self, service: EventService, bus: EventBus, *, interval: float = 1.0, batch: int = 100
    ) -> None:
        self.service = service
        self.bus = bus
        self.interval = interval
        self.batch = batch
        self.published = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        service.on_emit(lambda _events: self.wake())

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"relay-{self.service.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # The relay's own end is expected; a cancel of the task calling stop() is not
                # ours to swallow: its caller must see it.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise

    async def drain(self) -> int:
        """Publish everything pending now; returns how many were published."""
        total = 0
        while True:
            events = await self.service.outbox_pending(self.batch)
            if not events:
                return total
            await self.bus.publish(events)
            await self.service.outbox_delete([e.id for e in events])
            total += len(events)
            self.published += len(events)

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a stop() whose cancel lands just
            # after a wake-up is swallowed by wait_for, and stop() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Kept in the outbox: published again on the next pass, deduped downstream.
                self.failures += 1
                log.warning("relay %s: publish failed, will retry: %r", self.service.name, exc)
                await asyncio.sleep(min(self.interval, 0.5))
                self._wake.set()
