"""Live updates for the web UI: an engine hook that wakes the pages watching a saga.

Each open saga page holds a Server-Sent Events stream waiting on an ``asyncio.Event`` of its
saga; the hook sets it after every durable transition the engine makes to that saga (one dict
lookup per commit, nothing when no page watches). Pages of lists (every saga, the shop) check
``version`` a few times a second instead (a counter bumped per transition), so 500 orders per
second wake each of them a few times a second, not 2,000 times.

Sagas driven by another process (an API-only server whose workers run the sagas) never reach
this hook: the streams also poll the store every ``poll_seconds``.
"""

from __future__ import annotations

import asyncio

from sagaway.hooks import ClaimReason, Hook
from sagaway.state import Change, SagaRecord


class LiveUpdates(Hook):
    """Wakes watchers of a saga (``watch``); ``version`` counts transitions of any saga."""

    def __init__(self) -> None:
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self.version = 0

    def watch(self, saga_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._watchers.setdefault(saga_id, set()).add(event)
        return event

    def unwatch(self, saga_id: str, event: asyncio.Event) -> None:
        events = self._watchers.get(saga_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._watchers[saga_id]

    def _wake(self, saga_id: str) -> None:
        self.version += 1
        events = self._watchers.get(saga_id)
        if events:
            for event in events:
                event.set()

    def saga_started(self, record: SagaRecord) -> None:
        self._wake(record.id)

    def after_claim(self, record: SagaRecord, reason: ClaimReason) -> None:
        self._wake(record.id)

    def after_commit(self, record: SagaRecord, change: Change, seconds: float) -> None:
        self._wake(record.id)
