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
    committed by one batch of ``store``'s flusher, in the order given; AssertionError if they
    were not.

    A write may be queued by its call already, before this runs: SQLite's ``create`` and
    ``commit`` return the future of a queued write. Those are taken off the queue while the
    flusher is held and put back where they were given among the others, which queue (in
    order) when ``gather`` starts them."""
    early = {id(op[0]): op for op in store._pending}
    store._pending.clear()
    queued_at_call = [id(w) in early for w in writes]
    assert len(early) == sum(queued_at_call), "the store must be idle: its flusher waiting"
    wakeup, all_queued, count = store._wakeup, asyncio.Event(), len(writes) - len(early)

    class Held(asyncio.Event):
        """Swallows the writes' wake-ups until the last one is queued."""

        def set(self) -> None:
            if len(store._pending) >= count:
                all_queued.set()

    held = store._wakeup = Held()
    running = asyncio.gather(*writes, return_exceptions=True)
    try:
        if count:
            await asyncio.wait_for(all_queued.wait(), timeout=30)
    finally:
        if len(store._pending) == count:
            later = iter(store._pending)
            store._pending[:] = [
                early[id(w)] if at_call else next(later)
                for w, at_call in zip(writes, queued_at_call, strict=True)
            ]
        else:  # timed out: let them all go, the assertion below says the rest
            store._pending[:0] = early.values()
        store._wakeup = wakeup
        batches = store.stats.batches
        wakeup.set()
        # A flusher woken by a write queued at its call found nothing and waits on ``held``.
        asyncio.Event.set(held)
    results = await running
    assert store.stats.batches == batches + 1, "the writes shared one batch"
    return list(results)
