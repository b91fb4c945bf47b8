"""Closing an engine (or a choreography relay) right as its background loop is woken.

The maintainer waits for a wake-up (a store notification, ``engine.wake()``) or its interval.
A ``close()`` whose cancel reached that loop in the few event-loop turns between the wake-up
and the loop resuming used to be swallowed (Python 3.11's ``asyncio.wait_for`` returns the
inner result when cancelled after it completed), so the loop ran on and ``close()`` waited for
it forever. The crash tests hit it on Redis, whose pub/sub listener wakes the engine once it
has subscribed, about when a quick resume finished and closed the engine.

Each case wakes the loop and then lets the event loop turn a chosen number of times before
closing, so every interleaving of the cancel with the wake-up's callbacks is tried, in order,
without depending on timing.
"""

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from sagaway import Engine
from sagaway.choreography.bus import InProcessBus, Relay
from sagaway.choreography.service import EventService
from sagaway.store.memory import MemoryStore

TURNS = range(8)  # wake-up -> Event.wait done -> wait_for's callback -> loop resumes: < 8
CLOSE_SECONDS = 5.0  # a close that has not returned by then never will


async def _returns(closing: Coroutine[Any, Any, None], loop: asyncio.Task[None] | None) -> None:
    """``closing`` returns and the background ``loop`` it stops ends cancelled. Awaited apart
    (not under a timeout, whose cancel would reach the loop a second time and end it)."""
    assert loop is not None
    closed = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait([closed], timeout=CLOSE_SECONDS)
    if not done:
        loop.cancel()  # let the test end; the stuck loop is the failure
        await asyncio.gather(closed, return_exceptions=True)
    assert done, "close/stop never returned: the loop swallowed its cancel and ran on"
    await closed
    assert loop.cancelled()


@pytest.mark.parametrize("turns", TURNS)
async def test_engine_closes_when_woken_just_before(turns: int) -> None:
    engine = Engine(MemoryStore(), recovery_interval=60.0)
    await engine.open()
    await asyncio.sleep(0)  # the maintainer is now waiting for a wake-up
    engine.wake()
    for _ in range(turns):
        await asyncio.sleep(0)
    await _returns(engine.close(), engine._maintainer)


@pytest.mark.parametrize("turns", TURNS)
async def test_relay_stops_when_woken_just_before(turns: int, tmp_path: Path) -> None:
    service = EventService("shop", f"sqlite:///{tmp_path / 'shop.db'}")
    service.create_tables()
    relay = Relay(service, InProcessBus(), interval=60.0)
    relay.start()
    await asyncio.sleep(0)  # the relay's loop is now waiting for a wake-up
    relay.wake()
    for _ in range(turns):
        await asyncio.sleep(0)
    await _returns(relay.stop(), relay._task)
