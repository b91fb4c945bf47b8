"""An engine wired for tests: memory store, virtual clock, no background surprises.

``saga_engine`` exists so a user's test of their own saga is three lines, and so those tests are
deterministic: the engine's background recovery loop is pushed out of the way (tests call
``engine.recover()`` when they want a recovery pass) and time only moves through the clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sagaway.definition import Saga
from sagaway.engine import Engine
from sagaway.state import SagaRecord
from sagaway.store.memory import MemoryStore
from sagaway.testing.clock import VirtualClock

__all__ = ["SagaHarness", "saga_engine"]


@dataclass
class SagaHarness:
    """The engine under test with its store and clock, typed concretely for assertions."""

    engine: Engine
    store: MemoryStore
    clock: VirtualClock

    async def start(self, saga: Saga, input: Any, **kwargs: Any) -> str:
        return await self.engine.start(saga, input, **kwargs)

    async def wait(self, saga_id: str, timeout: float = 10.0) -> SagaRecord:
        """The saga with steps and history once terminal; AssertionError if it is not within
        ``timeout`` real seconds (a hung test should fail, not stall the suite)."""
        record = await self.engine.wait(saga_id, timeout=timeout)
        if not record.status.is_terminal:
            raise AssertionError(f"saga {saga_id} still {record.status} after {timeout}s")
        return await self.engine.get(saga_id)

    async def run(self, saga: Saga, input: Any, **kwargs: Any) -> SagaRecord:
        """Start a saga and wait for its end: ``(await h.run(saga, x)).status``."""
        return await self.wait(await self.start(saga, input, **kwargs))


@asynccontextmanager
async def saga_engine(
    *sagas: Saga,
    store: MemoryStore | None = None,
    clock: VirtualClock | None = None,
    auto_advance: bool = True,
    owner_id: str = "test-engine",
    lease_seconds: float = 30.0,
    **engine_kwargs: Any,
) -> AsyncIterator[SagaHarness]:
    """``async with saga_engine(checkout) as h: record = await h.run(checkout, order)``.

    Builds an opened ``Engine`` on a ``MemoryStore`` (pass one to share it between engines, as
    a restarted process would) with a ``VirtualClock``. By default the clock auto-advances, so
    retry backoff costs no real time; pass ``auto_advance=False`` (or your own clock) to step
    through waits with ``clock.advance``. The periodic lease renewal and recovery loop runs on
    real time, every ``min(recovery_interval, lease_seconds / 3)`` seconds (10 s by default,
    far longer than a unit test): call ``h.engine.recover()`` for a deterministic pass.
    """
    the_clock = clock if clock is not None else VirtualClock(auto_advance=auto_advance)
    the_store = store if store is not None else MemoryStore()
    engine_kwargs.setdefault("recovery_interval", 3600.0)
    engine = Engine(
        the_store,
        sagas=sagas or None,  # none given: every saga declared in the process, like Engine
        owner_id=owner_id,
        lease_seconds=lease_seconds,
        clock=the_clock,
        **engine_kwargs,
    )
    async with engine:
        yield SagaHarness(engine=engine, store=the_store, clock=the_clock)
