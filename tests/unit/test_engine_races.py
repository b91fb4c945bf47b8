"""Races inside one engine that the crash tests met under load, replayed deterministically.

Closing an engine (or a choreography relay) right as its background loop is woken: the
maintainer waits for a wake-up (a store notification, ``engine.wake()``) or its interval. A
``close()`` whose cancel reached that loop in the few event-loop turns between the wake-up and
the loop resuming used to be swallowed (Python 3.11's ``asyncio.wait_for`` returns the inner
result when cancelled after it completed), so the loop ran on and ``close()`` waited for it
forever. The crash tests hit it on Redis, whose pub/sub listener wakes the engine once it has
subscribed, about when a quick resume finished and closed the engine.

Two replies for one saga at once (below).

Each case lets the event loop turn a chosen number of times between the two events, so every
interleaving is tried, in order, without depending on timing.
"""

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from remotekit import ORDER, Parked
from sagaway import Engine, SagaStatus
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


# -- two replies for one saga at once ------------------------------------------------------------


class RoundTrips(MemoryStore):
    """The memory store with one event-loop turn before each take and each write, as a real
    store's round trip has: concurrent callers interleave there, the same way every run."""

    async def acquire(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0)
        return await super().acquire(*args, **kwargs)

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        await super().commit(*args, **kwargs)


async def _later(turns: int, delivering: Coroutine[Any, Any, bool]) -> bool:
    for _ in range(turns):
        await asyncio.sleep(0)
    return await delivering


@pytest.mark.parametrize("turns", TURNS)
async def test_a_stale_reply_beside_the_awaited_one_leaves_the_saga_to_its_run(
    turns: int,
) -> None:
    """A duplicate of an old reply (the sweep re-publishing a command whose deletion a crash
    lost) and the awaited reply reach one engine together. Both take the saga (taking is
    per owner), and the stale one gave the lease back (a parked saga holds none) under the
    awaited one's run: LeaseLost, the reply lost until the park timed out and the command went
    again (the remote crash test's ``[1, 2]``). One reply at a time per saga: each is applied
    or ignored, and nothing is sent twice."""
    parked = Parked("memory://")
    async with parked.engine(store=RoundTrips()) as engine:
        saga_id = await engine.start(parked.saga, ORDER)
        reserve = await parked.stub.next_command("inventory.reserve")
        await parked.settled()
        reserved = await parked.stub.run_handler(reserve)
        assert await engine.deliver(reserved) is True
        charge = await parked.stub.next_command("payment.charge")
        await parked.settled()
        charged = await parked.stub.run_handler(charge)
        stale, applied = await asyncio.gather(
            engine.deliver(reserved), _later(turns, engine.deliver(charged))
        )
        record = await engine.wait(saga_id, timeout=5)
    assert (stale, applied) == (False, True)
    assert record.status is SagaStatus.SUCCEEDED, record.error
    assert [(c.topic, c.attempt) for c in parked.stub.calls] == [
        ("inventory.reserve", 1),
        ("payment.charge", 1),
    ], "each command sent once"
