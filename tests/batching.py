"""Put writes in one group-commit batch *for certain*, for tests about what a batch does.

``asyncio.gather`` of several writes happens to land them in one batch today (each queues its
write before the flusher gets a turn), but that rests on the event loop's scheduling order and
on the flusher's internals, not on anything the test controls. ``in_one_batch`` holds the
store's flusher until every write is queued, then lets it go: one batch by construction.

Works with the stores that group-commit through a ``_pending`` queue and a ``_wakeup`` event
(SQLite, PostgreSQL). Importable as ``batching`` (``tests/conftest.py`` puts ``tests/`` on
``sys.path``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

__all__ = ["in_one_batch"]


async def in_one_batch(store: Any, *writes: Awaitable[Any]) -> list[Any]:
    """Await ``writes`` (results or exceptions, as ``gather(return_exceptions=True)``), all
    committed by one batch of ``store``'s flusher; AssertionError if they were not."""
    assert not store._pending, "the store must be idle: its flusher waiting for work"
    wakeup, all_queued, count = store._wakeup, asyncio.Event(), len(writes)

    class Held(asyncio.Event):
        """Swallows the writes' wake-ups until the last one is queued."""

        def set(self) -> None:
            if len(store._pending) >= count:
                all_queued.set()

    store._wakeup = Held()
    running = asyncio.gather(*writes, return_exceptions=True)
    try:
        await asyncio.wait_for(all_queued.wait(), timeout=30)
    finally:
        store._wakeup = wakeup
        batches = store.stats.batches
        wakeup.set()
    results = await running
    assert store.stats.batches == batches + 1, "the writes shared one batch"
    return list(results)
