"""A clock that only moves when the test says so.

The engine reads time (leases, deadlines, event times) and sleeps (retry backoff) only through
its ``Clock``. Give it a ``VirtualClock`` and a test can cross a 30-second backoff or a one-hour
deadline instantly and deterministically, instead of sleeping and hoping the timing works out.

How a test drives it::

    clock = VirtualClock()
    engine = Engine(store, clock=clock, sagas=[saga])
    saga_id = await engine.start(saga, order)     # a step fails and backs off 2 s
    await clock.wait_for_sleepers(1)                # the saga is now asleep on the clock
    assert clock.next_wakeup == clock.now() + 2.0
    clock.advance(2.0)                              # wakes it; it retries on the next loop turn
    record = await engine.wait(saga_id)

``advance`` is synchronous: it moves time and wakes every sleeper that is due; the woken tasks
run the next time the test awaits something. ``wait_for_sleepers`` is the synchronisation point
("the code under test has reached its sleep"), so no test needs a real sleep to line things up.

With ``auto_advance=True`` every ``sleep`` moves the clock forward by its own duration and
returns at once: handy when a test only wants backoff to cost nothing and does not care to
observe each wait (time still passes, so deadlines and leases see it).

Only what goes through the clock is virtual: a step's ``timeout`` is enforced by a timer on
the event loop's real time, so tests of timeouts use small real values.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["VirtualClock"]

DEFAULT_START = 1_700_000_000.0
"""A realistic POSIX time, so records look like real ones and ``now() > 0`` always holds."""


class VirtualClock:
    """Implements ``sagaway.clock.Clock`` with time that moves only by ``advance``."""

    def __init__(self, start: float = DEFAULT_START, *, auto_advance: bool = False) -> None:
        self._now = float(start)
        self.auto_advance = auto_advance
        # (wake-up time, sequence for FIFO order among equal times, future to resolve)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._watchers: list[asyncio.Future[None]] = []
        self.slept: list[float] = []
        """Every duration passed to ``sleep``, in call order (the backoff schedule, say)."""

    # -- the Clock protocol -------------------------------------------------------------------

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced ``seconds`` past the time of the call."""
        self.slept.append(seconds)
        if seconds <= 0 or self.auto_advance:
            if seconds > 0:
                self.advance(seconds)
            await asyncio.sleep(0)  # still a scheduling point, like asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        self._notify()
        try:
            await future
        finally:
            future.cancel()  # no-op once resolved; a cancelled sleeper is pruned later

    # -- driving time -------------------------------------------------------------------------

    def advance(self, seconds: float) -> int:
        """Move time forward and wake every sleeper now due; return how many were woken."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds
        woken = 0
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
                woken += 1
        return woken

    def advance_to_next(self) -> float:
        """Jump to the earliest pending wake-up (waking it); return the seconds jumped."""
        wake_at = self.next_wakeup
        if wake_at is None:
            return 0.0
        delta = max(wake_at - self._now, 0.0)
        self.advance(delta)
        return delta

    def set_time(self, when: float) -> int:
        """Jump to an absolute time (not earlier than now); wake what is due."""
        return self.advance(when - self._now)

    # -- observing sleepers -------------------------------------------------------------------

    def _prune(self) -> None:
        self._sleepers = [s for s in self._sleepers if not s[2].done()]
        heapq.heapify(self._sleepers)

    @property
    def sleepers(self) -> int:
        """How many tasks are asleep on this clock right now."""
        self._prune()
        return len(self._sleepers)

    @property
    def wakeups(self) -> list[float]:
        """The pending wake-up times, earliest first."""
        self._prune()
        return sorted(s[0] for s in self._sleepers)

    @property
    def next_wakeup(self) -> float | None:
        self._prune()
        return self._sleepers[0][0] if self._sleepers else None

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Wait (without moving time) until at least ``count`` tasks sleep on this clock.

        This is how a test knows the code under test has reached its backoff: no polling, no
        real sleep. Wrap it in ``asyncio.timeout`` if the sleep might never come.
        """
        while self.sleepers < count:
            watcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(watcher)
            try:
                await watcher
            finally:
                watcher.cancel()
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

    def _notify(self) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now}, sleepers={self.sleepers})"
