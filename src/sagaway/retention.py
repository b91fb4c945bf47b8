"""Retention: finished sagas are removed from the log once they are old enough.

``Engine(retention_days=...)`` (the checkout service: ``SAGAWAY_RETENTION_DAYS``) prunes from
the engine's maintenance loop; ``sagaway prune --finished-before DATE`` does it by hand. Both go
through :func:`prune_finished`, which works in batches of a few hundred sagas: each batch is
one short atomic write (on SQLite it joins a group commit like any transition), so running
sagas never wait long behind it.

What is prunable is the store's rule (``PruningStore``): SUCCEEDED or COMPENSATED, not pinned
(``sagaway pin``), last written before the cutoff. Active, parked and FAILED sagas (an operator
may still retry those) always stay. A pruned saga's idempotency key goes with it, so keep
sagas longer than any client may retry a request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping

from sagaway.clock import Clock
from sagaway.errors import SagawayError
from sagaway.store.base import PruningStore, SagaStore

log = logging.getLogger("sagaway.retention")

RETENTION_ENV = "SAGAWAY_RETENTION_DAYS"
DAY = 86_400.0
# Sagas per delete: one atomic write each. 200 sagas of 3 steps are ~2,500 rows, 10-20 ms on
# SQLite, where the write runs in the group commit on the event loop's thread: every running
# saga's next write waits for it.
BATCH = 200
# One retention pass (one per maintenance-loop turn, about a second) spends at most this long,
# so pruning takes at most ~5% of the engine's time and a backlog is worked off over the
# following passes: ~200 sagas a second (benchmarks/log_growth.py --retention), far above a
# million a day.
PASS_BUDGET_SECONDS = 0.05
# How often the maintenance loop looks for sagas to prune once the backlog is gone.
INTERVAL_SECONDS = 60.0


def check_retention_days(days: float) -> float:
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise ValueError(f"retention_days must be a number of days, not {days!r}")
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"retention_days must be a positive number of days, not {days!r}")
    return float(days)


def retention_days_from_env(environ: Mapping[str, str] = os.environ) -> float | None:
    """``SAGAWAY_RETENTION_DAYS`` as a number of days; None when unset or empty (keep all)."""
    raw = environ.get(RETENTION_ENV, "").strip()
    if not raw:
        return None
    try:
        return check_retention_days(float(raw))
    except ValueError:
        raise SagawayError(
            f"{RETENTION_ENV}={raw!r}: expected a positive number of days (1, 7, 0.5)"
        ) from None


def pruning_store(store: SagaStore) -> PruningStore:
    if not isinstance(store, PruningStore):
        raise SagawayError(
            f"{type(store).__name__} cannot prune finished sagas (it lacks the PruningStore "
            "tier): retention needs one of the stores shipped with sagaway"
        )
    return store


async def prune_finished(
    store: PruningStore,
    *,
    finished_before: float,
    batch: int = BATCH,
    until: float | None = None,
    before_delete: Callable[[list[str]], Awaitable[None]] | None = None,
    pause: float = 0.0,
) -> tuple[list[str], bool]:
    """Prune every saga prunable before ``finished_before``, ``batch`` at a time.

    ``until`` (a ``time.monotonic()`` value) stops after the batch that passes it.
    ``before_delete`` sees each batch's ids before they are deleted (an archive writes them
    out; if it raises, nothing of that batch is deleted). ``pause`` seconds are slept between
    batches (``sagaway prune``: the workers' writes get the log in between). Returns the ids
    removed and whether everything prunable is gone (False: stopped by ``until``).
    """
    removed: list[str] = []
    while True:
        if before_delete is None:  # chosen and removed at once: workers take disjoint batches
            ids = await store.prune_next(finished_before=finished_before, limit=batch)
            removed += ids
        else:
            ids = await store.prunable(finished_before=finished_before, limit=batch)
            if ids:
                await before_delete(ids)
                removed += await store.prune(ids, finished_before=finished_before)
        if len(ids) < batch:
            return removed, True
        if until is not None and time.monotonic() >= until:
            return removed, False
        if pause > 0:
            await asyncio.sleep(pause)


class Retention:
    """The maintenance loop's retention pass: at most one every ``interval`` seconds (of the
    engine's clock), sooner while a backlog remains."""

    def __init__(
        self,
        store: SagaStore,
        days: float,
        clock: Clock,
        *,
        interval: float = INTERVAL_SECONDS,
        batch: int = BATCH,
    ) -> None:
        self.store = pruning_store(store)
        self.seconds = check_retention_days(days) * DAY
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self._next = 0.0

    async def tick(self) -> int:
        """Prune what is due, within ``PASS_BUDGET_SECONDS``; returns how many were removed.
        Never raises (a failed pass is logged and tried again next interval)."""
        now = self.clock.now()
        if now < self._next:
            return 0
        try:
            removed, done = await prune_finished(
                self.store,
                finished_before=now - self.seconds,
                batch=self.batch,
                until=time.monotonic() + PASS_BUDGET_SECONDS,
            )
        except Exception:
            log.exception("pruning finished sagas failed; trying again in %.0f s", self.interval)
            self._next = now + self.interval
            return 0
        if done:
            self._next = now + self.interval
        if removed:
            log.info(
                "pruned %d finished saga(s) older than %g days%s",
                len(removed),
                self.seconds / DAY,
                "" if done else " (more to do)",
            )
        return len(removed)
